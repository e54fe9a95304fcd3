"""One call on a lent GPU machine: every CUDA check and benchmark of issue 12, inside a time budget.

A session that is lent a GPU has 15 minutes of device time for everything, a cold start (minutes)
included, so the checks have to run as one prepared command that puts the most valuable ones first
and never lets one slow step eat the rest. This driver reads a plan (tools/device_plan.toml), runs
its steps in order under a deadline, and writes what happened under $OUT after every step, so a call
killed at its limit still brings back everything that finished.

    python3 tools/device_session.py --budget 500            # on the GPU box, in the repo root
    python3 tools/device_session.py --list                  # the plan, here or there

Standard library only: it runs on the box's own python3, before anything is installed.

A step is a bash command. The driver exports PY (the interpreter), OUT, KIT (the carried kit folder,
see `make device-kit`), REF (rosinality's files inside it, or empty) and SITE (where carried wheels
are installed; it is on PYTHONPATH for every step). Step keys:
    name        short name, used by --only/--skip and in the summary
    run         the bash command
    timeout     seconds the step may take at most (cut to what is left of the budget)
    needs       seconds it needs to be worth starting; skipped when less is left
    background  start it and go on (its output joins the log when it ends)
    exclusive   wait for background steps first (timings must not share the GPU)
    required    stop the session if it fails (setup)
    requires    names of variables that must be non-empty, e.g. ["REF"]; skipped otherwise
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the plan is small, but we still need a TOML reader
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAN = Path(__file__).resolve().parent / "device_plan.toml"
# outcomes of every call on this machine, for --resume: a warm machine keeps /tmp, $OUT is emptied
STATE = Path(tempfile.gettempdir()) / "cartoongan-device-session.json"
TAIL_LINES = 25  # lines of each step's output kept in the summary: a pytest result or a bench table
KILL_GRACE_S = 5.0


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


@dataclass
class Outcome:
    name: str
    status: str  # passed, failed, timeout, skipped
    seconds: float = 0.0
    rc: int | None = None
    why: str = ""
    tail: list[str] = field(default_factory=list)


KEYS = set(Step.__dataclass_fields__)


def load_plan(path: Path) -> list[Step]:
    """The plan's steps, in order; a misspelt key or a repeated name is an error, not a surprise."""
    if tomllib is None:
        raise SystemExit("device_session: reading the plan needs Python 3.11 or newer (tomllib)")
    data = tomllib.loads(path.read_text())
    steps = []
    for raw in data.get("step", []):
        unknown = set(raw) - KEYS
        if unknown:
            raise SystemExit(f"device_session: {path.name}: step {raw.get('name', '?')!r} has unknown keys "
                             f"{sorted(unknown)}; known: {sorted(KEYS)}")
        steps.append(Step(**raw))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise SystemExit(f"device_session: {path.name}: step names repeat: {names}")
    return steps


def select(steps: list[Step], only: list[str], skip: list[str]) -> list[Step]:
    """Steps named by --only (all when empty), minus --skip; unknown names are an error."""
    names = {s.name for s in steps}
    bad = [n for n in only + skip if n not in names]
    if bad:
        raise SystemExit(f"device_session: no step named {bad}; the plan has {[s.name for s in steps]}")
    return [s for s in steps if (not only or s.name in only) and s.name not in skip]


class Session:
    """Runs steps under one deadline and keeps $OUT's log and summaries current."""

    def __init__(self, out: Path, budget: float, env: dict[str, str], clock=time.monotonic,
                 earlier: list[Outcome] = ()):
        self.out, self.env, self.clock = out, env, clock
        self.deadline = clock() + budget
        self.outcomes: list[Outcome] = list(earlier)
        self.background: list[tuple[Step, subprocess.Popen, Path, float]] = []
        self.log = out / "session.log"
        self.log.write_text("")

    def left(self) -> float:
        return self.deadline - self.clock()

    def run(self, steps: list[Step]) -> int:
        for step in steps:
            if step.exclusive:
                self.wait_background()
            outcome = self.start(step)
            if outcome is not None:
                self.record(outcome)
                if step.required and outcome.status != "passed":
                    for rest in steps[steps.index(step) + 1:]:
                        self.record(Outcome(rest.name, "skipped", why=f"required step {step.name} did not pass"))
                    break
        self.wait_background()
        return exit_code(self.outcomes)

    def start(self, step: Step) -> Outcome | None:
        missing = [v for v in step.requires if not self.env.get(v)]
        if missing:
            return Outcome(step.name, "skipped", why=f"{', '.join(missing)} not set")
        left = self.left()
        if left < max(step.needs, 1.0):
            return Outcome(step.name, "skipped", why=f"{left:.0f} s of budget left, it needs {step.needs:.0f} s")
        self.append(f"\n===== {step.name}: {step.run}\n")
        fd, name = tempfile.mkstemp(prefix=f"{step.name}-", suffix=".log")
        log = Path(name)
        with os.fdopen(fd, "w") as f:
            # a new session, so that a timeout can end the whole tree (pytest's workers, nvcc)
            proc = subprocess.Popen(["bash", "-c", step.run], cwd=ROOT, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        began = self.clock()
        if step.background:
            self.background.append((step, proc, log, began))
            return None
        return self.finish(step, proc, log, began, min(step.timeout, left))

    def finish(self, step: Step, proc: subprocess.Popen, log: Path, began: float, limit: float) -> Outcome:
        try:
            rc = proc.wait(timeout=max(limit - (self.clock() - began), 0.1))
            status = "passed" if rc == 0 else "failed"
            why = "" if rc == 0 else f"exit code {rc}"
        except subprocess.TimeoutExpired:
            stop(proc)
            rc, status, why = None, "timeout", f"stopped after {limit:.0f} s"
        text = log.read_text(errors="replace")
        log.unlink()
        self.append(text + f"\n----- {step.name}: {status} {why}\n")
        return Outcome(step.name, status, round(self.clock() - began, 1), rc, why, text.splitlines()[-TAIL_LINES:])

    def wait_background(self) -> None:
        while self.background:
            step, proc, log, began = self.background.pop(0)
            self.record(self.finish(step, proc, log, began, min(step.timeout, self.left() + (self.clock() - began))))

    def append(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text)

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        write_summaries(self.out, self.outcomes, self.left())
        STATE.write_text(json.dumps([o.__dict__ for o in self.outcomes]))


def resume(steps: list[Step]) -> tuple[list[Step], list[Outcome]]:
    """The steps an earlier call on this machine did not settle (skipped, stopped, never reached),
    and the outcomes of those it did (passed or failed: a rerun would spend time to learn the same)."""
    earlier = {o["name"]: Outcome(**o) for o in json.loads(STATE.read_text())} if STATE.is_file() else {}
    settled = {n: o for n, o in earlier.items() if o.status in ("passed", "failed")}
    for o in settled.values():
        o.why = f"earlier call{': ' + o.why if o.why else ''}"
    return [s for s in steps if s.name not in settled], [settled[s.name] for s in steps if s.name in settled]


def stop(proc: subprocess.Popen) -> None:
    """End a step's process group: SIGTERM (pytest writes its report), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def exit_code(outcomes: list[Outcome]) -> int:
    """0 when every step passed, 1 when one failed or timed out, 3 when some were only skipped."""
    if any(o.status in ("failed", "timeout") for o in outcomes):
        return 1
    return 3 if any(o.status == "skipped" for o in outcomes) else 0


def write_summaries(out: Path, outcomes: list[Outcome], left: float) -> None:
    """summary.json (machine-readable) and summary.md (a status table, then each step's tail)."""
    (out / "summary.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    lines = ["| step | status | s | note |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.why} |" for o in outcomes]
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
    env.update(PY=python, OUT=str(out), KIT=str(kit or ""), SITE=str(site),
               REF=str(ref) if ref and (ref / "model.py").is_file() else "", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


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
            print(f"{s.name:14} {s.timeout:4.0f} s  {' '.join(flags + s.requires):20} {command[:90]}")
        print(f"sum of timeouts: {sum(s.timeout for s in steps if not s.background):.0f} s, budget {a.budget:.0f} s")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    kit = a.kit if a.kit.is_dir() else None
    steps, earlier = resume(steps) if a.resume else (steps, [])
    session = Session(a.out, a.budget, environment(a.out, kit, a.python), earlier=earlier)
    code = session.run(steps)
    print((a.out / "summary.md").read_text().split("\n## ")[0])
    return code


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]


if __name__ == "__main__":
    sys.exit(main())
