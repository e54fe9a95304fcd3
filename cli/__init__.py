"""The `cartoongan` command line: a thin Typer layer over the library (installed as cartoongan_cli)."""
import signal
import sys


def main() -> None:
    """The console script. Ctrl-C and SIGTERM are held while the app (and torch) import, and arrive
    once it is whole: torch's and numpy's import code swallowed a KeyboardInterrupt half-way (the
    command then ran to its end, or a RecursionError came out of a later import), and a SIGTERM
    before the app's handler killed the process without a word."""
    stops = {signal.SIGINT, signal.SIGTERM}
    held = signal.pthread_sigmask(signal.SIG_BLOCK, stops) if hasattr(signal, "pthread_sigmask") else None
    try:
        try:
            from .app import app, take_sigterm_as_ctrl_c

            take_sigterm_as_ctrl_c()
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held till now arrives here
    except KeyboardInterrupt:
        _interrupted()
    try:
        app()  # what app.main runs, once its SIGTERM handler is in place (taken above)
    except KeyboardInterrupt:  # while typer builds the command tree, before OneLineErrors.main catches it
        _interrupted()


def _interrupted() -> None:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)
