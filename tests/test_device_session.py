"""tools/device_session.py: the one prepared command a GPU session runs inside its 15-minute lease.

A mistake there costs device time that cannot be had back, so the driver's own behaviour (order,
budget, timeouts, background steps, summaries) is tested here on small shell steps, and the default
plan's commands are checked against the CLI and the test suite they select."""
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "device_session.py"
spec = importlib.util.spec_from_file_location("device_session", SCRIPT)
ds = importlib.util.module_from_spec(spec)
sys.modules["device_session"] = ds  # dataclasses look their module up there
spec.loader.exec_module(ds)


def _plan(tmp_path, body: str) -> Path:
    p = tmp_path / "plan.toml"
    p.write_text(body)
    return p


def _driver(tmp_path, body: str, *extra: str) -> tuple[list[str], dict[str, str], Path]:
    """The driver's command line, environment and $OUT for a plan; its state, step logs and SITE
    live in a TMPDIR of the test's own."""
    out = tmp_path / "out"
    (tmp_path / "tmp").mkdir(exist_ok=True)
    command = [sys.executable, str(SCRIPT), "--plan", str(_plan(tmp_path, body)), "--out", str(out),
               "--kit", str(tmp_path / "no-kit"), *extra]
    return command, {**os.environ, "TMPDIR": str(tmp_path / "tmp")}, out


def _session(tmp_path, body: str, budget: float = 60, *extra: str):
    command, env, out = _driver(tmp_path, body, "--budget", str(budget), *extra)
    res = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else []
    return res, {o["name"]: o for o in summary}, out


def _driver_with_a_child(tmp_path, body: str) -> tuple[subprocess.Popen, Path]:
    """A driver started on a plan whose step writes its child's pid to $OUT/child.pid, once it has."""
    command, env, out = _driver(tmp_path, body)
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for _ in range(300):
        if (out / "child.pid").is_file() and (out / "child.pid").read_text().strip():
            break
        time.sleep(0.05)
    return driver, out


def test_steps_run_in_order_and_the_summary_says_how_each_ended(tmp_path):
    res, by_name, out = _session(tmp_path, """
[[step]]
name = "first"
timeout = 30
run = 'echo "py=$PY out=$OUT site=$SITE"; echo "path=$PYTHONPATH"'
[[step]]
name = "broken"
timeout = 30
run = 'echo about to fail; exit 4'
[[step]]
name = "after"
timeout = 30
run = 'pwd'
""")
    assert res.returncode == 1, res.stdout + res.stderr
    assert list(by_name) == ["first", "broken", "after"]
    assert [o["status"] for o in by_name.values()] == ["passed", "failed", "passed"]
    assert by_name["broken"]["rc"] == 4 and by_name["broken"]["why"] == "exit code 4"
    first = "\n".join(by_name["first"]["tail"])
    assert f"py={sys.executable} out={out}" in first
    site = re.search(r"site=(\S+)", first).group(1)
    assert re.search(r"path=(\S+)", first).group(1).split(os.pathsep)[0] == site
    assert by_name["after"]["tail"] == [str(ROOT)]  # steps run in the repository's root
    log = (out / "session.log").read_text()
    assert log.index("about to fail") < log.index("===== after: pwd") and "----- broken: failed exit code 4" in log
    md = (out / "summary.md").read_text()
    assert re.search(r"\| broken \| failed \| \d+ \| exit code 4: about to fail \|", md) and "## first (passed)" in md
    assert "| after | passed |" in res.stdout  # the status table is printed last, for the reply's tail


def _gone(pid: int) -> bool:
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower():
            return True
        time.sleep(0.1)
    return False


def test_a_step_past_its_timeout_is_stopped_with_its_children(tmp_path):
    # the child ignores SIGINT and SIGTERM and outlives the step's shell: only SIGKILL to the group ends it
    started = time.monotonic()
    res, by_name, out = _session(tmp_path, """
[[step]]
name = "hangs"
timeout = 3
run = 'bash -c "trap \\"\\" INT TERM; sleep 60" & echo $! > "$OUT/child.pid"; wait'
[[step]]
name = "next"
timeout = 30
run = 'true'
""")
    assert time.monotonic() - started < 40
    assert by_name["hangs"]["status"] == "timeout" and by_name["next"]["status"] == "passed"
    assert _gone(int((out / "child.pid").read_text()))
    assert res.returncode == 1


def test_a_driver_told_to_stop_ends_its_steps_and_says_so(tmp_path):
    driver, out = _driver_with_a_child(tmp_path, """
[[step]]
name = "long"
timeout = 100
run = 'sleep 60 & echo $! > "$OUT/child.pid"; echo started; wait'
""")
    driver.terminate()
    stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 128 + 15 and "Traceback" not in stderr, stderr
    (long,) = json.loads((out / "summary.json").read_text())
    assert long["status"] == "killed" and long["why"] == "the driver got signal 15" and "started" in long["tail"]
    assert "| long | killed |" in stdout and _gone(int((out / "child.pid").read_text()))


def test_the_budget_skips_what_no_longer_fits_and_cuts_what_runs(tmp_path):
    res, by_name, _ = _session(tmp_path, """
[[step]]
name = "too-big"
timeout = 500
needs = 100
run = 'echo ran'
[[step]]
name = "fits"
timeout = 500
run = 'sleep 30'
[[step]]
name = "late"
timeout = 500
run = 'true'
""", 3)
    assert by_name["too-big"]["status"] == "skipped" and "it needs 100 s" in by_name["too-big"]["why"]
    assert by_name["fits"]["status"] == "timeout" and by_name["fits"]["seconds"] < 10  # cut to the budget
    assert by_name["late"]["status"] == "skipped"
    assert res.returncode == 1


def test_a_required_step_that_fails_ends_the_session_and_missing_inputs_skip_a_step(tmp_path):
    body = """
[[step]]
name = "needs-ref"
requires = ["REF"]
timeout = 30
run = 'echo never'
[[step]]
name = "setup"
required = true
timeout = 30
run = 'exit 2'
[[step]]
name = "rest"
timeout = 30
run = 'echo never'
"""
    res, by_name, _ = _session(tmp_path, body)
    assert by_name["needs-ref"] == {**by_name["needs-ref"], "status": "skipped", "why": "REF not set"}
    assert by_name["setup"]["status"] == "failed"
    assert by_name["rest"]["status"] == "skipped" and "required step setup" in by_name["rest"]["why"]
    assert "never" not in json.dumps(by_name)
    res, by_name, _ = _session(tmp_path, body.replace("exit 2", "true").replace('\nrequires = ["REF"]', ""),
                               60, "--skip", "rest")
    assert list(by_name) == ["needs-ref", "setup"] and res.returncode == 0


def test_a_background_step_runs_beside_the_next_and_an_exclusive_step_waits_for_it(tmp_path):
    # the background step can only finish once the step after it has started: run one after the
    # other, it would wait out its timeout; the exclusive step sees its file only if it waited
    res, by_name, out = _session(tmp_path, """
[[step]]
name = "beside"
background = true
timeout = 30
run = 'while [ ! -f "$OUT/go" ]; do sleep 0.05; done; sleep 0.5; touch "$OUT/done"; echo finished'
[[step]]
name = "starter"
timeout = 30
run = 'touch "$OUT/go"'
[[step]]
name = "alone"
exclusive = true
timeout = 30
run = 'test -f "$OUT/done"'
""")
    assert res.returncode == 0, json.dumps(by_name, indent=1)
    assert list(by_name) == ["starter", "beside", "alone"]  # recorded as they end
    assert by_name["beside"]["tail"] == ["finished"] and (out / "beside.log").read_text() == "finished\n"
    assert "----- beside: passed  (output in beside.log)" in (out / "session.log").read_text()


def test_a_background_step_past_its_timeout_is_stopped_while_a_foreground_step_runs(tmp_path):
    res, by_name, _ = _session(tmp_path, """
[[step]]
name = "hung"
background = true
timeout = 1
run = 'sleep 60'
[[step]]
name = "long"
timeout = 30
run = 'sleep 6'
""")
    assert res.returncode == 1, json.dumps(by_name, indent=1)  # a timeout is not a pass
    assert list(by_name) == ["hung", "long"]  # recorded as they end: hung first
    assert by_name["hung"]["status"] == "timeout" and by_name["hung"]["seconds"] < 4
    assert by_name["long"]["status"] == "passed"


def test_resume_runs_only_what_an_earlier_call_left_unsettled(tmp_path):
    body = """
[[step]]
name = "ok"
timeout = 30
run = 'echo ok >> "$OUT/ran"'
[[step]]
name = "broken"
timeout = 30
run = 'echo broken >> "$OUT/ran"; exit 1'
[[step]]
name = "big"
timeout = 30
needs = 100
run = 'echo big >> "$OUT/ran"'
"""
    res, by_name, out = _session(tmp_path, body, 50)
    assert [o["status"] for o in by_name.values()] == ["passed", "failed", "skipped"]
    res, by_name, out = _session(tmp_path, body, 500, "--resume")
    assert (out / "ran").read_text().split() == ["ok", "broken", "big"]  # ok and broken ran once
    assert [(o["name"], o["status"]) for o in by_name.values()] == [("ok", "passed"), ("broken", "failed"),
                                                                    ("big", "passed")]
    assert by_name["broken"]["why"] == "earlier call: exit code 1" and by_name["ok"]["why"] == "earlier call"
    assert "| ok | passed |" in (out / "summary.md").read_text() and res.returncode == 1
    res, by_name, out = _session(tmp_path, body, 500)  # without --resume, a call starts afresh
    assert (out / "ran").read_text().split() == ["ok", "broken", "big", "ok", "broken", "big"]


def test_resume_retries_a_required_step_that_failed_and_after_waits_for_its_step(tmp_path):
    body = """
[[step]]
name = "setup"
required = true
timeout = 30
run = 'test -f "$OUT/fixed"'
[[step]]
name = "build"
timeout = 30
run = 'test -f "$OUT/fixed" && exit 3'
[[step]]
name = "uses-build"
after = ["build"]
timeout = 30
run = 'echo never'
[[step]]
name = "plain"
timeout = 30
run = 'true'
"""
    res, by_name, out = _session(tmp_path, body)
    assert [o["status"] for o in by_name.values()] == ["failed", "skipped", "skipped", "skipped"]
    (out / "fixed").write_text("")
    res, by_name, out = _session(tmp_path, body, 60, "--resume")
    assert [(n, o["status"]) for n, o in by_name.items()] == [("setup", "passed"), ("build", "failed"),
                                                              ("uses-build", "skipped"), ("plain", "passed")]
    assert by_name["uses-build"]["why"] == "build did not pass"


def test_nothing_a_finished_step_started_outlives_it(tmp_path):
    res, by_name, out = _session(tmp_path, """
[[step]]
name = "leaves-a-child"
timeout = 30
run = 'sleep 60 >/dev/null & echo $! > "$OUT/child.pid"'
""")
    assert by_name["leaves-a-child"]["status"] == "passed" and _gone(int((out / "child.pid").read_text()))


def test_a_second_signal_does_not_cut_the_clean_up_short(tmp_path):
    driver, out = _driver_with_a_child(tmp_path, """
[[step]]
name = "deaf"
timeout = 100
run = 'trap "" INT; sleep 60 & echo $! > "$OUT/child.pid"; wait; wait'
""")
    driver.terminate()
    time.sleep(0.5)  # inside the clean-up's grace for SIGINT, which the step ignores
    driver.terminate()
    stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 128 + 15 and "Traceback" not in stderr, stderr
    assert [o["status"] for o in json.loads((out / "summary.json").read_text())] == ["killed"]
    assert _gone(int((out / "child.pid").read_text()))


def test_plan_mistakes_are_one_line(tmp_path):
    res, _, _ = _session(tmp_path, '[[step]]\nname = "a"\ntimeout = 1\nrun = "true"\ntimout = 3\n')
    assert res.returncode != 0 and "unknown keys ['timout']" in res.stderr and "Traceback" not in res.stderr
    res, _, _ = _session(tmp_path, '[[step]]\nname = "a"\ntimeout = 1\nrun = "true"\n', 60, "--only", "b")
    assert "no step named ['b']" in res.stderr and "Traceback" not in res.stderr
    for line, says in (('needs = "60"', "needs = '60' is not a"), ('requires = "REF"', "requires = 'REF' is not a list"),
                       ("background = 1", "background = 1 is not a <class 'bool'>")):
        res, _, _ = _session(tmp_path, f'[[step]]\nname = "a"\ntimeout = 1\nrun = "true"\n{line}\n')
        assert res.returncode == 1 and says in res.stderr and "Traceback" not in res.stderr, res.stderr
    res, _, _ = _session(tmp_path, '[[step]]\nname = "a"\nrun = "true"\n')
    assert "missing ['timeout']" in res.stderr and "Traceback" not in res.stderr
    for name in ("session", "a b", "x/y"):
        res, _, _ = _session(tmp_path, f'[[step]]\nname = "{name}"\ntimeout = 1\nrun = "true"\n')
        assert "it names files in $OUT" in res.stderr and "Traceback" not in res.stderr
    res, _, _ = _session(tmp_path, '[[step]]\nname = "a"\ntimeout = 1\nrun = "true"\nafter = ["b"]\n')
    assert "comes after ['b'], which no earlier step is" in res.stderr


def test_a_step_that_prints_too_much_keeps_its_head_and_tail(tmp_path):
    res, by_name, out = _session(tmp_path, """
[[step]]
name = "loud"
timeout = 60
run = 'echo first; head -c 3000000 /dev/zero | tr "\\0" x; echo; echo last'
""")
    log = (out / "session.log").read_text()
    assert by_name["loud"]["status"] == "passed" and by_name["loud"]["tail"][-1] == "last"
    assert ds.LOG_CAP < len(log) < ds.LOG_CAP + 1000 and "first" in log and "bytes left out" in log


def test_the_kit_sets_ref_only_when_it_holds_rosinality(tmp_path):
    kit = tmp_path / "kit"
    assert ds.environment(tmp_path, kit, "python3")["REF"] == ""
    (kit / "rosinality").mkdir(parents=True)
    (kit / "rosinality" / "model.py").write_text("")
    env = ds.environment(tmp_path, kit, "python3")
    assert env["REF"] == str(kit / "rosinality") and env["KIT"] == str(kit)


# --- the default plan ---------------------------------------------------------------------------

PLAN = ds.load_plan(ds.DEFAULT_PLAN)


def test_the_default_plan_fits_what_a_call_brings_back():
    names = [s.name for s in PLAN]
    assert names[0] == "setup" and PLAN[0].required
    # at most 8 files come back from $OUT: the driver's three and each junit file
    written = {m for s in PLAN for m in re.findall(r'\$OUT/([\w.-]+)', s.run)}
    logs = {f"{s.name}.log" for s in PLAN if s.background}
    assert len(written | logs | {"session.log", "summary.md", "summary.json"}) <= 8
    assert all(re.fullmatch(r"[\w.-]+", name) for name in written | logs)
    assert all(set(s.requires) <= {"REF", "KIT"} for s in PLAN)
    # whatever is timed runs alone on the GPU
    assert all(s.exclusive for s in PLAN if "cartoongan_cli bench" in s.run)
    assert [s.name for s in PLAN if s.background] == ["suite", "ref-build"]
    assert all(s.after == ["ref-build"] for s in PLAN if s.name.startswith("ref-") and s.name != "ref-build")
    # the setup's Python is at least valid Python (it can only run on the GPU box)
    script = PLAN[0].run.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    compile(script, "setup", "exec")


def _bench_commands():
    for step in PLAN:
        for line in step.run.splitlines():
            if "cartoongan_cli bench" in line:
                env = line.split('"$PY"')[0].split()
                args = shlex.split(line.split("cartoongan_cli", 1)[1].split("||")[0].replace("$REF", "/ref"))
                yield step.name, env, args


class Reached(Exception):
    pass


@pytest.mark.parametrize("step,env,args", list(_bench_commands()), ids=lambda v: v if isinstance(v, str) else None)
def test_every_bench_command_in_the_plan_parses_and_reaches_the_library(step, env, args, monkeypatch):
    """Each bench line is parsed by the real CLI, with a CUDA device stood in, up to its library
    call: a misspelt flag would otherwise be found on the GPU box, at the price of device time."""
    import torch
    from cartoongan import device
    from cartoongan.bench import kernels, profile, reference, speed
    from cartoongan.errors import ConfigError
    from cartoongan_cli.app import app

    calls = []

    def reach(name):
        def fake(*a, **k):
            calls.append((name, a, k))
            raise ConfigError(f"reached {name}")
        return fake

    monkeypatch.setattr(device, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(device, "check_precision", lambda p, d: None)
    for mod, fn in ((speed, "run_bench"), (reference, "compare_with_reference"), (kernels, "run_kernel_bench"),
                    (profile, "profile_phases")):
        monkeypatch.setattr(mod, fn, reach(fn))
    res = CliRunner().invoke(app, args)
    assert "reached" in res.output, res.output
    name, a, k = calls[0]
    expected = {"--reference": "compare_with_reference", "--kernels": "run_kernel_bench",
                "--profile": "profile_phases"}
    assert name == next((fn for flag, fn in expected.items() if flag in args), "run_bench")
    if "--reference" in args:
        assert a[0] == Path("/ref")
    if "--precision" in args:
        assert args[args.index("--precision") + 1] in map(str, list(a) + list(k.values()))
    assert all(e.startswith("CARTOONGAN_FIR=") for e in env)


COUNT_SELECTIONS = """
import json, sys, pytest
class Count:
    def pytest_collection_finish(self, session):
        self.n = len(session.items)
counts = []
for args in json.loads(sys.argv[1]):
    plugin = Count()
    pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", *args], plugins=[plugin])
    counts.append(plugin.n)
print(json.dumps(counts))
"""


def _collected(*selections: list[str]) -> list[int]:
    """How many tests each selection collects, in one process (a collection imports torch)."""
    res = subprocess.run([sys.executable, "-c", COUNT_SELECTIONS, json.dumps(selections)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_plans_pytest_selections_cover_every_cuda_test_once():
    selections = {}
    for step in PLAN:
        m = re.search(r'-m (cuda|"[^"]+")(?: -k ("[^"]+"|\S+))?', step.run)
        if m and "pytest" in step.run:
            selections[step.name] = ["-m", m.group(1).strip('"')] + (["-k", m.group(2).strip('"')] if m.group(2) else [])
    assert set(selections) == {"suite", "cuda", "compiled"}
    counts = dict(zip([*selections, "every cuda", "make test"],
                      _collected(*selections.values(), ["-m", "cuda"], ["-m", "not slow"])))
    assert counts["compiled"] == 2 and counts["cuda"] + counts["compiled"] == counts["every cuda"] > 20
    assert counts["suite"] + counts["every cuda"] == counts["make test"] > 300
