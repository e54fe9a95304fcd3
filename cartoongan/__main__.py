"""`python -m cartoongan ...` (also what torchrun launches with -m)."""
from cartoongan_cli.app import main

if __name__ == "__main__":
    main()
