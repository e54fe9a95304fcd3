"""The `cartoongan` command line: a thin Typer layer over the library (installed as cartoongan_cli)."""
