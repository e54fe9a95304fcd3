"""The `cartoongan` Typer app and what its commands share (error handling, option types).

Each command lives in a module by topic and parses flags, builds a config, calls one library
function; the modules register themselves on `app` when imported at the end of this file."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from enum import Enum
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer uses click itself, whose NoArgsIsHelpError came in 8.2
    from click.exceptions import ClickException

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:
        class NoArgsIsHelpError(Exception):
            """Never raised: this click prints the help and exits by itself."""

from cartoongan.config import AUGMENTS, COMPILE_MODES, PRECISIONS
from cartoongan.errors import CartoonganError, ConfigError, Interrupted
from cartoongan.models.generator import NOISE_MODES

from .console import fail, out


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A Typer choice type whose values are the library's tuple of allowed values."""
    return Enum(name, {re.sub(r"\W", "_", v): v for v in values}, type=str)


class OneLineErrors(TyperGroup):
    """The command group whose usage errors (a bad flag value, a missing argument, an unknown
    command) are one `error:` line like every other error, instead of the usage text and a box."""

    def main(self, args=None, *rest, standalone_mode: bool = True, **kwargs):
        args = expand_home(sys.argv[1:] if args is None else list(args))
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **kwargs)
        if "" in args:
            # Path("") is ".": `--out ""` (an unset shell variable) would train into the current folder
            fail("an argument is an empty string (an unset shell variable?): give every value, path or name", 2)
        try:
            code = super().main(args, *rest, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # `cartoongan` alone, `cartoongan data`: the help is the answer
            if exc.format_message().strip():  # click's own help text; typer's rich one is printed already
                exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            message = " ".join(exc.format_message().split()).rstrip(".") + _dash_file_hint(exc, args)
            ctx = getattr(exc, "ctx", None)
            path = ctx.command_path if ctx is not None else self._command_path(args)
            fail(f"{message} (see `{path} --help`)", exc.exit_code)
        except typer.Abort:
            fail("aborted")
        except OSError as exc:
            if not _unwritable_output(exc):
                raise
            # `info X > report.txt` or `--help > file` on a full disk: the work is done, its report is not
            fail(f"cannot write to stdout: {exc.strerror} (free some space, or send it elsewhere)")
        if code == 130:
            # typer turns a Ctrl-C or SIGTERM that lands while it parses the arguments (its lazy
            # imports take 150 ms, after the import-time block) into a silent Exit(130); every
            # command's own stop says its line through fail(), which exits rather than returns
            fail("interrupted", 130)
        sys.exit(code if isinstance(code, int) else 0)


    def _command_path(self, args: list[str]) -> str:
        """`cartoongan data prepare`: the (sub)commands that lead `args`, for a usage error click
        raised without its context (`--seeds` given no value)."""
        words, group = ["cartoongan"], self
        for arg in args:
            command = (getattr(group, "commands", None) or {}).get(arg)  # a group's (typer's click or click)
            if command is None:
                break
            words.append(arg)
            group = command
        return " ".join(words)


def _dash_file_hint(exc: Exception, args: list[str]) -> str:
    """`cartoongan info -old.pt`: click reads a file whose name starts with '-' as an unknown
    option ("No such option: -o"); where such a file exists, say how to name it."""
    option = getattr(exc, "option_name", None)  # click's NoSuchOption
    named = next((a for a in args if option and a.startswith(option) and not a.startswith("--")
                  and os.path.lexists(a)), None)
    return f"; for the file {named}, write ./{named}" if named else ""


def _unwritable_output(exc: OSError) -> bool:
    """Whether `exc` is the terminal's or a redirect's write failing: no file named, a full or
    failing device. A reader gone (`| head`, EPIPE) is not: that ends quietly."""
    import errno

    return (not isinstance(exc, BrokenPipeError) and exc.filename is None
            and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO))


def expand_home(args: list[str]) -> list[str]:
    """`--data=~/faces`: the shell expands a ~ that starts a word, not one after '=', so the flag got
    a folder literally named '~' that no one means. Expanded here as the shell would have
    (`~user` too; an unknown user stays as written)."""
    return [re.sub(r"^(--[\w-]+=)(~[^/]*)", lambda m: m[1] + os.path.expanduser(m[2]), a) for a in args]


app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune a StyleGAN2 face generator into a cartoon-face generator.")


def _print_version(value: bool) -> None:
    if value:
        from cartoongan import __version__

        out.print(f"cartoongan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Fine-tune a StyleGAN2 face generator into a cartoon-face generator.

    Shell completion: `cartoongan --install-completion`.
    """


NoiseMode = choices("NoiseMode", NOISE_MODES)


@contextlib.contextmanager
def user_errors(fixes: dict[type[CartoonganError], str] | None = None):
    """Expected problems become one line on stderr and exit code 1 (2 for usage, 130 for Ctrl-C).
    `fixes`: for an error the library cannot give a fix of (it does not know the command's flags),
    what the user can do, added to its line."""
    try:
        yield
    except ConfigError as exc:  # an impossible flag or recipe value: a usage error
        fail(str(exc), 2)
    except Interrupted as exc:
        fail(str(exc), 130)
    except CartoonganError as exc:
        fix = next((text for kind, text in (fixes or {}).items() if isinstance(exc, kind)), None)
        fail(f"{exc}: {fix}" if fix else str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (MemoryError, RuntimeError) as exc:
        line = out_of_memory(exc) or symlink_loop(exc)
        if line is None:
            raise
        fail(line)
    except OSError as exc:
        line = filesystem_error(exc)
        if line is None:
            raise
        fail(line)


def filesystem_error(exc: OSError) -> str | None:
    """The line for an OSError about a path the user gave, which the checks let through because
    merely asking about the path failed (Path.exists raises for a name too long); else None."""
    import errno

    if not exc.filename:
        return None
    name = exc.filename if isinstance(exc.filename, str) else os.fsdecode(exc.filename)
    if exc.errno == errno.ENAMETOOLONG:
        longest = max(len(os.fsencode(part)) for part in Path(name).parts)
        return (f"{_shortened(name)}: a name too long for the filesystem (its longest part is {longest} bytes; "
                "most allow 255): choose a shorter name")
    return f"{_shortened(name)}: {exc.strerror or exc}"


def _shortened(name: str, keep: int = 60) -> str:
    return name if len(name) <= 2 * keep else f"{name[:keep]}…{name[-keep:]}"


def symlink_loop(exc: BaseException) -> str | None:
    """The line for Path.resolve() meeting a loop of links, which Python 3.11 raises as a bare
    RuntimeError (an output folder's checks resolve paths the reading never touched), else None."""
    found = re.fullmatch(r"Symlink loop from '(.*)'", str(exc), re.S) if isinstance(exc, RuntimeError) else None
    return f"{_shortened(found[1])}: a loop of symbolic links: fix the link, or name another path" if found else None


def out_of_memory(exc: BaseException) -> str | None:
    """The line to print when `exc` is an allocation failure (of the GPU or of the host), else None.
    A checkpoint already written stays intact: saves are atomic."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc):
        return ("the GPU ran out of memory: lower --batch (or what the command renders at once), or free the GPU "
                "(nvidia-smi lists what holds it)")
    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
        return "out of memory: lower --batch, or ask for less at once (--size, --seeds, --interpolate, --n)"
    return None


def valid_seeds(value: str | None) -> str | None:
    from cartoongan.models.latents import parse_seeds

    if value is None:  # an optional flag not given
        return value
    try:
        parse_seeds(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def file_path(example: str) -> dict:
    """typer.Option settings for a flag that names an output file: a value ending in '/' (or '/.')
    names a folder, which Path() would drop, writing a file under the folder's name (`swap -o new/`
    wrote a checkpoint called `new`)."""
    def parse(value) -> Path:
        text = os.fspath(value)
        if text and os.path.basename(text) in ("", "."):
            raise typer.BadParameter(f"{text} names a folder (it ends in '{text[-1]}'): name a file, e.g. "
                                     f"{Path(text) / example}")
        return Path(text)
    return {"parser": parse, "metavar": "<path>"}  # the help's metavar, as for the other path flags


def checked_flag(check, value):
    """value through a library check(value, name) (one rule for flags and library callers), its
    ConfigError as Typer's BadParameter: a usage error naming the flag."""
    from cartoongan.errors import ConfigError

    if value is None:  # an optional flag not given
        return value
    try:
        return check(value, "it")
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def truncation_psi(value: float | None) -> float | None:
    from cartoongan.data.render import check_truncation

    return checked_flag(check_truncation, value)


DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N")

# Upper bounds of sizes and counts: far beyond any real use, and low enough that a typo (a size
# of 1e12, a count of a billion) is one line at once instead of an overflow, the OOM killer, or a
# folder filling the disk. Seeds: numpy's RandomState takes 32 bits.
SEED_MAX = 2**32 - 1
IMAGE_SIZE_MAX = 4096
COUNT_MAX = 100_000


def main() -> None:
    take_sigterm_as_ctrl_c()
    app()  # click already ends quietly (exit 1) when stdout's reader is gone (`| head`)


def take_sigterm_as_ctrl_c() -> None:
    """SIGTERM ends a command as Ctrl-C does (see _terminated), except in torchrun's (or srun's)
    workers: a rank blocked in a rendezvous or an NCCL wait runs no Python handler until that
    returns, and should die at once when torchrun ends it (training installs its own stop flag)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    """SIGTERM (`kill`, a scheduler's preemption) ends a command the way Ctrl-C does, so each keeps
    what it made and says so (sample the images written, project its projection so far, data
    prepare the old folder) instead of dying silently with exit 143. A repeat is ignored while
    that is written, as launchers may deliver one twice; training steps install their own flag."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


# the library's allowed values as Typer choices, shared by several commands
Augment = choices("Augment", AUGMENTS)
Precision = choices("Precision", PRECISIONS)
CompileMode = choices("CompileMode", COMPILE_MODES)


# Commands register on `app` when their module is imported: here, in the order `--help` lists them.
from . import train  # noqa: E402,F401
from . import sample  # noqa: E402,F401
from . import edit  # noqa: E402,F401
from . import checkpoints  # noqa: E402,F401
from . import data  # noqa: E402,F401
from . import demo  # noqa: E402,F401
from . import project  # noqa: E402,F401
from . import dualstyle  # noqa: E402,F401
from . import align  # noqa: E402,F401
from . import metrics  # noqa: E402,F401
from . import plot  # noqa: E402,F401
from . import ablation  # noqa: E402,F401
from . import bench  # noqa: E402,F401
from . import weights  # noqa: E402,F401
