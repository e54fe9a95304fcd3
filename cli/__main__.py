"""`python -m cartoongan_cli ...` (also what torchrun launches with -m)."""
from cartoongan_cli import main

main()
