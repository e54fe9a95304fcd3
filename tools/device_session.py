"""One call on a lent GPU machine: every CUDA check and benchmark of issue 12, inside a time budget.

A session that is lent a GPU has 15 minutes of device time for everything, a cold start (minutes)
included, so the checks have to run as one prepared command that puts the most valuable ones first
and never lets one slow step eat the rest. This driver reads a plan (tools/device_plan.toml), runs
its steps in order under a deadline, and writes what happened under $OUT after every step, so a call
cut short still brings back everything that finished.

    python3 tools/device_session.py --budget 540            # on the GPU box, in the repo root
    python3 tools/device_session.py --resume --budget 200   # a second call on the still-warm box
    python3 tools/device_session.py --list                  # the plan, here or there

Standard library only (Python 3.11+): it runs on the box's own python3, before anything is installed.

A step is a bash command, run with `bash -eo pipefail -c`. The driver exports PY (the interpreter),
OUT, KIT (the carried kit folder, see `make device-kit`), REF (rosinality's files inside it, or
empty) and SITE (where carried wheels are installed; first on PYTHONPATH for every step). Step keys:
    name        short name, used by --only/--skip and in the summary
    run         the bash command
    timeout     seconds the step may take at most (cut to what is left of the budget)
    needs       seconds it needs to be worth starting; skipped when less is left
    background  start it and go on; its output goes to $OUT/NAME.log
    exclusive   wait for background steps first (timings must not share the GPU)
    required    stop the session if it fails (setup)
    requires    names of variables that must be non-empty, e.g. ["REF"]; skipped otherwise
    after       names of earlier steps that must have passed (in this call or, with --resume, an
                earlier one); skipped otherwise
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAN = Path(__file__).resolve().parent / "device_plan.toml"
# outcomes of every call on this machine, for --resume: a warm machine keeps /tmp, $OUT is emptied
STATE = Path(tempfile.gettempdir()) / "cartoongan-device-session.json"
TAIL_LINES = 25  # lines of each step's output kept in the summary: a pytest result or a bench table
LOG_CAP = 1 << 20  # bytes of one step's output kept in a log (head and tail): a file over 16 MiB never comes back
# SIGINT first: pytest then still writes its junit file and short summary; bash and the rest get TERM, then KILL
STOP_SIGNALS = ((signal.SIGINT, 8.0), (signal.SIGTERM, 3.0))
POLL_S = 1.0  # how often a foreground step's wait looks at the background steps


@dataclass
class Step:
    name: str
    run: str
    timeout: float
    needs: float = 0.0
    background: bool = False
    exclusive: bool = False
    required: bool = False
    requires: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    name: str
    status: str  # passed, failed, timeout, killed, skipped
    seconds: float = 0.0
    rc: int | None = None
    why: str = ""
    tail: list[str] = field(default_factory=list)


@dataclass
class Running:
    step: Step
    proc: subprocess.Popen
    began: float
    limit: float  # seconds from began
    log: Path
    offset: int  # where the step's output starts in log


TYPES = {"name": str, "run": str, "timeout": (int, float), "needs": (int, float), "background": bool,
         "exclusive": bool, "required": bool, "requires": list, "after": list}
RESERVED = {"session", "summary"}  # names of the driver's own files in $OUT
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class PlanError(SystemExit):
    pass


def load_plan(path: Path) -> list[Step]:
    """The plan's steps, in order. A misspelt key, a wrong type or a repeated name is one line now,
    not a surprise on the GPU box."""
    if tomllib is None:
        raise PlanError("device_session: reading the plan needs Python 3.11 or newer (tomllib)")
    steps = []
    for raw in tomllib.loads(path.read_text()).get("step", []):
        where = f"device_session: {path.name}: step {raw.get('name', len(steps) + 1)!r}"
        unknown, missing = set(raw) - set(TYPES), {"name", "run", "timeout"} - set(raw)
        if unknown or missing:
            raise PlanError(f"{where}: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
        for key, value in raw.items():
            listed = TYPES[key] is list
            if not isinstance(value, TYPES[key]) or isinstance(value, bool) != (TYPES[key] is bool) or (
                    listed and not all(isinstance(v, str) for v in value)):
                raise PlanError(f"{where}: {key} = {value!r} is not a {'list of str' if listed else TYPES[key]}")
        if not re.fullmatch(r"[\w.-]+", raw["name"]) or raw["name"] in RESERVED:
            raise PlanError(f"{where}: a name of letters, digits, '.', '_', '-' (not {sorted(RESERVED)}): it names "
                            "files in $OUT")
        steps.append(Step(**raw))
    known = set()
    for step in steps:
        if set(step.after) - known:
            raise PlanError(f"device_session: {path.name}: step {step.name!r} comes after "
                            f"{sorted(set(step.after) - known)}, which no earlier step is")
        known.add(step.name)
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise PlanError(f"device_session: {path.name}: step names repeat: {names}")
    return steps


def select(steps: list[Step], only: list[str], skip: list[str]) -> list[Step]:
    """Steps named by --only (all when empty), minus --skip; unknown names are an error."""
    names = {s.name for s in steps}
    bad = [n for n in only + skip if n not in names]
    if bad:
        raise PlanError(f"device_session: no step named {bad}; the plan has {[s.name for s in steps]}")
    return [s for s in steps if (not only or s.name in only) and s.name not in skip]


class Interrupted(Exception):
    """The driver itself was told to stop (the call's own limit, Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Session:
    """Runs steps under one deadline and keeps $OUT's log and summaries current."""

    def __init__(self, out: Path, budget: float, env: dict[str, str], earlier: list[Outcome] = ()):
        self.out, self.env = out, env
        self.deadline = time.monotonic() + budget
        self.outcomes: list[Outcome] = list(earlier)
        self.running: list[Running] = []
        self.log = out / "session.log"
        self.log.write_text("")
        self.write()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, steps: list[Step]) -> int:
        try:
            for i, step in enumerate(steps):
                self.collect(wait=step.exclusive)
                status = self.start(step)
                if step.required and status != "passed":
                    for rest in steps[i + 1:]:
                        self.record(Outcome(rest.name, "skipped", why=f"required step {step.name} did not pass"))
                    break
            self.collect(wait=True)
        except Interrupted as stop_:
            for sig in HANDLED:  # a second signal must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
            for r in list(self.running):
                if r.proc.poll() is not None:
                    self.finish(r)
                else:
                    stop(r.proc, ((signal.SIGINT, 2.0),))
                    self.finish(r, "killed", f"the driver got signal {stop_.signum}")
            return 128 + stop_.signum
        return exit_code(self.outcomes)

    def start(self, step: Step) -> str | None:
        """Start a step; a foreground one is waited for. Its status, None while in the background."""
        missing = [v for v in step.requires if not self.env.get(v)]
        unmet = [a for a in step.after if self.status_of(a) != "passed"]
        left = self.left()
        if missing or unmet or left < max(step.needs, 1.0):
            why = (f"{', '.join(missing)} not set" if missing else
                   f"{', '.join(unmet)} did not pass" if unmet else
                   f"{left:.0f} s of budget left, it needs {step.needs:.0f} s")
            return self.record(Outcome(step.name, "skipped", why=why))
        log = self.out / f"{step.name}.log" if step.background else self.log
        self.append(f"\n===== {step.name}: {step.run.strip()}\n")
        offset = log.stat().st_size if log.exists() else 0
        with log.open("a") as f:
            # its own process group, so that a stop reaches pytest's workers and nvcc too; not its own
            # session, so that whatever survives still ends with the call
            proc = subprocess.Popen(["bash", "-eo", "pipefail", "-c", step.run], cwd=ROOT, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, process_group=0)
        r = Running(step, proc, time.monotonic(), min(step.timeout, left), log, offset)
        self.running.append(r)
        self.write()  # the summary lists it as running, should the call be cut short
        return None if step.background else self.wait(r)

    def wait(self, r: Running) -> str:
        """Wait for a step until its limit (stopping it there) and record how it ended. While a
        foreground step runs, the background steps are looked at every POLL_S: one past its own
        limit (a hung nvcc) is stopped then, not once the foreground step is over."""
        while r.proc.poll() is None:
            left = r.limit - (time.monotonic() - r.began)
            if left <= 0:
                stop(r.proc, STOP_SIGNALS)
                return self.finish(r, "timeout", f"stopped after {r.limit:.0f} s")
            try:
                r.proc.wait(timeout=min(left, POLL_S))
            except subprocess.TimeoutExpired:
                if not r.step.background:
                    self.collect(wait=False)
        return self.finish(r)

    def collect(self, wait: bool) -> None:
        """Record background steps that have ended (all of them, waiting, when `wait`)."""
        for r in [r for r in self.running if r.step.background]:
            over = time.monotonic() - r.began > r.limit
            if wait or over or r.proc.poll() is not None:
                self.wait(r)

    def finish(self, r: Running, status: str | None = None, why: str = "") -> str:
        """Record an ended step (by its exit code unless `status` is given), then forget it."""
        rc = r.proc.returncode if status is None else None
        end_group(r.proc)  # nothing a step started outlives it: ninja, a daemon, a stray worker
        if status is None:
            status, why = ("passed", "") if rc == 0 else ("failed", f"exit code {rc}")
        text = cap(r.log, r.offset)
        where = "" if r.log == self.log else f" (output in {r.log.name})"
        self.append(f"\n----- {r.step.name}: {status} {why}{where}\n")
        self.record(Outcome(r.step.name, status, round(time.monotonic() - r.began, 1), rc, why,
                            text.splitlines()[-TAIL_LINES:]))
        self.running.remove(r)  # after recording: an interruption in between still finds it here
        return status

    def status_of(self, name: str) -> str | None:
        return next((o.status for o in reversed(self.outcomes) if o.name == name), None)

    def append(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text)

    def record(self, outcome: Outcome) -> str:
        self.outcomes.append(outcome)
        self.write()
        STATE.write_text(json.dumps([o.__dict__ for o in self.outcomes]))
        return outcome.status

    def write(self) -> None:
        done = {o.name for o in self.outcomes}
        write_summaries(self.out, self.outcomes, [r.step.name for r in self.running if r.step.name not in done],
                        self.left())


def cap(log: Path, offset: int) -> str:
    """A step's output from `offset` on; past LOG_CAP only its head and tail stay in the file."""
    with log.open("rb+") as f:
        f.seek(offset)
        data = f.read()
        if len(data) > LOG_CAP:
            half = LOG_CAP // 2
            data = data[:half] + f"\n[... {len(data) - LOG_CAP} bytes left out ...]\n".encode() + data[-half:]
            f.seek(offset)
            f.write(data)
            f.truncate()
    return data.decode(errors="replace")


def stop(proc: subprocess.Popen, signals) -> None:
    """Stop a running step: each signal to its process group in turn, with its grace, until the
    step's shell has ended; the group's other members are ended by end_group."""
    for sig, grace in signals:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    end_group(proc)


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL to whatever is left of a step's process group, then reap its shell."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def resume(steps: list[Step]) -> tuple[list[Step], list[Outcome]]:
    """The steps an earlier call on this machine did not settle (skipped, stopped, never reached;
    a required step unless it passed), and the outcomes of those it did (passed, or failed: a rerun
    would spend time to learn the same)."""
    earlier = {o["name"]: Outcome(**o) for o in json.loads(STATE.read_text())} if STATE.is_file() else {}
    required = {s.name for s in steps if s.required}
    settled = {n: o for n, o in earlier.items()
               if o.status == "passed" or (o.status == "failed" and n not in required)}
    for o in settled.values():
        o.why = f"earlier call{': ' + o.why if o.why else ''}"
    return [s for s in steps if s.name not in settled], [settled[s.name] for s in steps if s.name in settled]


def exit_code(outcomes: list[Outcome]) -> int:
    """0 when no step failed (skipped ones are in the summary), 1 when one failed or was stopped."""
    return 1 if any(o.status in ("failed", "timeout", "killed") for o in outcomes) else 0


def _note(o: Outcome) -> str:
    """The table's note: why a step ended so, and for a failed one its last line of output (the
    reason, such as an AssertionError, which the table printed last in the reply would not show)."""
    last = next((line.strip() for line in reversed(o.tail) if line.strip()), "") if o.status == "failed" else ""
    last = last.replace("|", "/")
    return f"{o.why}: {last[:140]}" if last else o.why


def write_summaries(out: Path, outcomes: list[Outcome], running: list[str], left: float) -> None:
    """summary.json (machine-readable) and summary.md (a status table, then each step's tail)."""
    (out / "summary.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    lines = ["| step | status | s | note |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {_note(o)} |" for o in outcomes]
    lines += [f"| {name} | running | | |" for name in running]
    lines.append(f"\nbudget left: {left:.0f} s\n")
    for o in outcomes:
        if o.tail:
            lines += [f"## {o.name} ({o.status})", "```", *o.tail, "```", ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def environment(out: Path, kit: Path | None, python: str) -> dict[str, str]:
    """What every step sees: PY, OUT, KIT, REF, SITE, and SITE first on PYTHONPATH."""
    env = dict(os.environ)
    site = Path(tempfile.gettempdir()) / "cartoongan-site"
    ref = kit / "rosinality" if kit else None
    env.update(PY=python, OUT=str(out.resolve()), KIT=str(kit.resolve()) if kit else "", SITE=str(site),
               REF=str(ref.resolve()) if ref and (ref / "model.py").is_file() else "", PYTHONUNBUFFERED="1",
               PWD=str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


def _interrupt(signum, frame):
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", type=Path, default=DEFAULT_PLAN)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole session")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "device-out"))
    p.add_argument("--kit", type=Path, default=ROOT / ".device-kit", help="folder made by `make device-kit`")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--only", default="", help="comma-separated step names")
    p.add_argument("--skip", default="", help="comma-separated step names")
    p.add_argument("--resume", action="store_true", help="run only what an earlier call on this (warm) machine "
                   "left unsettled: skipped, stopped or never reached")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    a = p.parse_args(argv)
    steps = select(load_plan(a.plan), _names(a.only), _names(a.skip))
    if a.list:
        for s in steps:
            flags = [k for k in ("background", "exclusive", "required") if getattr(s, k)]
            command = " ; ".join(line.strip() for line in s.run.splitlines() if line.strip())
            needs = s.requires + [f"after {a}" for a in s.after]
            print(f"{s.name:14} {s.timeout:4.0f} s  {' '.join(flags + needs):20} {command[:90]}")
        print(f"sum of timeouts: {sum(s.timeout for s in steps if not s.background):.0f} s, budget {a.budget:.0f} s")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    steps, earlier = resume(steps) if a.resume else (steps, [])
    session = Session(a.out, a.budget, environment(a.out, a.kit if a.kit.is_dir() else None, a.python), earlier)
    for sig in HANDLED:
        signal.signal(sig, _interrupt)
    code = session.run(steps)
    print((a.out / "summary.md").read_text().split("\n## ")[0])
    return code


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]


if __name__ == "__main__":
    sys.exit(main())
