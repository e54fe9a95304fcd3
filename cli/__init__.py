"""The `cartoongan` command line: a thin Typer layer over the library (installed as cartoongan_cli)."""
import sys


def main() -> None:
    """The console script: the app, imported here so that a Ctrl-C during the second or so that
    importing torch takes is one line too, not a traceback from inside torch."""
    try:
        from .app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run()
