"""Runs that were killed, interrupted or edited: what a kill mid-save leaves must resume, what a
killed process logged must not be logged twice, and a hand-edited run must not train on defaults."""
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from cartoongan_cli.app import app
from typer.testing import CliRunner

import cartoongan_cli
from cartoongan import load_checkpoint, save_checkpoint
from cartoongan.errors import CartoonganError, ConfigError
from cartoongan.report import NullReporter
from cartoongan.train import run_dir as run_dir_module
from cartoongan.train.runs import pretrain, resumed_config
from cartoongan.weights import checkpoint as checkpoint_module

from .helpers import blob_images, free_port, launch_as_rank, stops_after, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4 (read-only: tests copy it)."""
    root = tmp_path_factory.mktemp("interrupted")
    data = blob_images(root / "data", n=4)
    pretrain(tiny_config(iters=4, ckpt_every=2, sample_every=4, log_every=1), data, root / "run")
    return root / "run"


def _copy(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_latest_is_written_before_the_numbered_copy(tmp_path, monkeypatch):
    """A kill between the two files of a save leaves latest.pt, so the run resumes."""
    folder = run_dir_module.RunDirectory(tmp_path / "run")
    real = run_dir_module.save_checkpoint
    order = []

    def recording(path, ckpt):
        order.append(path.name)
        if path.parent.name == "checkpoints":
            raise KeyboardInterrupt  # killed between the two writes
        return real(path, ckpt)

    monkeypatch.setattr(run_dir_module, "save_checkpoint", recording)
    with pytest.raises(KeyboardInterrupt):
        folder.save({"x": 1}, 10, numbered=True)
    assert order == ["latest.pt", "000010.pt"] and (tmp_path / "run" / "latest.pt").is_file()


def test_a_kill_between_latest_and_its_numbered_copy_gets_the_copy_back_on_resume(finished, tmp_path):
    """The resumed run goes on past the step latest.pt holds and would never write its numbered
    checkpoint: a checkpoint sweep had a hole there."""
    run = _copy(finished, tmp_path)
    (run / "checkpoints" / "000004.pt").unlink()  # killed after latest.pt (step 4), before 000004.pt
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"])
    assert res.exit_code == 0, res.output
    restored = load_checkpoint(run / "checkpoints" / "000004.pt")
    assert restored["cartoongan"]["step"] == 4 and load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002.pt", "000004.pt", "000005.pt"]
    assert not list(run.rglob(".*.tmp"))


def test_the_last_steps_numbered_copy_comes_back_too_and_a_stops_save_gets_none(finished, tmp_path):
    """The last step of a call is saved numbered whatever --ckpt-every says (5 of every 2 here); a
    kill before its copy left a hole for good, since the restore went by `step % ckpt_every`. A
    stop's save (step 7 of 9) writes latest.pt alone: a resume makes it no numbered copy."""
    run = _copy(finished, tmp_path)
    assert runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"]).exit_code == 0
    (run / "checkpoints" / "000005.pt").unlink()  # killed after latest.pt (step 5), before 000005.pt
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "6"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "checkpoints" / "000005.pt")["cartoongan"]["step"] == 5
    assert runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "7"]).exit_code == 0
    ckpt = load_checkpoint(run / "latest.pt")
    ckpt["cartoongan"]["config"]["train"]["iters"] = 9  # as a Ctrl-C at step 7 of 9 saved it
    save_checkpoint(run / "latest.pt", ckpt)
    (run / "checkpoints" / "000007.pt").unlink()
    assert runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "8"]).exit_code == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["000002.pt", "000004.pt", "000005.pt", "000006.pt", "000008.pt"]


def test_a_run_with_checkpoints_but_no_latest_says_which_to_copy(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "latest.pt").unlink()
    with pytest.raises(ConfigError, match=r"newest checkpoint is .*000004\.pt: copy it to"):
        resumed_config(run)
    res = runner.invoke(app, ["pretrain", "--data", str(tmp_path), "--out", str(run), "--recipe", "tiny"])
    assert res.exit_code == 2 and "copy its newest checkpoint" in res.output and "000004.pt" in res.output


def test_resume_drops_a_killed_saves_temp_files_and_the_log_rows_past_its_checkpoint(finished, tmp_path):
    run = _copy(finished, tmp_path)
    ckpt = load_checkpoint(run / "checkpoints" / "000002.pt")
    save_checkpoint(run / "latest.pt", ckpt)  # as if killed after step 4's log rows, before its save
    (run / ".latest.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (run / "checkpoints" / ".000004.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    assert _steps(run) == [1, 2, 3, 4]
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"])
    assert res.exit_code == 0, res.output
    assert _steps(run) == [1, 2, 3, 4, 5]  # 3 and 4 once each, from the resumed process
    assert not list(run.rglob(".*.tmp"))


def _another_process_trains_meanwhile(monkeypatch, act):
    """`act` runs while this run loads its data: after its checks, before its lock (minutes on a
    large dataset), as a second process's whole run or save would."""
    from cartoongan.train import runs

    real = runs.load_dataset
    monkeypatch.setattr(runs, "load_dataset", lambda *a, **k: (act(), real(*a, **k))[1])


def _files(run) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_new_run_refuses_a_folder_another_process_trained_while_it_loaded(finished, tmp_path, monkeypatch):
    """Two `pretrain --out SAME` at once: the one that took the lock last trained from step 0 over
    the other's finished run (its checkpoints replaced, both logs in one, no word)."""
    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "run"
    _another_process_trains_meanwhile(monkeypatch, lambda: shutil.copytree(finished, run))
    with pytest.raises(CartoonganError, match=r"now holds a run, which another process started while this one was "
                                              r"loading: nothing of it was changed; continue it with --resume"):
        pretrain(tiny_config(iters=2), data, run)
    assert _files(run) == _files(finished)


def test_a_resume_refuses_a_checkpoint_another_process_replaced_while_it_loaded(finished, tmp_path, monkeypatch):
    """Two `--resume RUN` at once: the later one went back to the step it had loaded, cut the other's
    log rows past it, and left the other's newer numbered checkpoints beside its own."""
    run = _copy(finished, tmp_path)
    older = load_checkpoint(run / "checkpoints" / "000002.pt")
    save_checkpoint(run / "latest.pt", older)  # the run stands at step 2 when the resume loads it
    newer = load_checkpoint(finished / "latest.pt")
    _another_process_trains_meanwhile(monkeypatch, lambda: save_checkpoint(run / "latest.pt", newer))
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"])
    said = " ".join(res.output.split())
    assert res.exit_code == 1 and "was replaced while this run was loading it (another process trained" in said, said
    assert _steps(run) == [1, 2, 3, 4] and load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == 4


def test_a_resume_keeps_a_live_writers_temp_file(finished, tmp_path):
    """A resume deleted every temp file in the run folder: a running `export RUN/latest.pt -o
    RUN/x.pt` then failed with "No such file or directory"."""
    import subprocess

    from cartoongan import outputs

    run = _copy(finished, tmp_path)
    done = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    dead_pid = int(done.communicate()[0])  # a pid that has exited
    live = run / f".x.pt.{outputs._HOST_TAG}p{os.getppid()}-abc123.tmp"  # pytest's parent: alive
    gone = run / f".x.pt.{outputs._HOST_TAG}p{dead_pid}-abc123.tmp"
    for path in (live, gone):
        path.write_bytes(b"half a checkpoint")
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"])
    assert res.exit_code == 0, res.output
    assert live.exists() and not gone.exists()


def test_a_log_whose_last_row_lost_its_newline_keeps_every_row_through_resumes(finished, tmp_path):
    """The resumed run's first row went onto the last row's line (two rows no reader parses, so
    `plot` saw none), and the resume after dropped that line as torn: both rows lost."""
    run = _copy(finished, tmp_path)
    log = run / "log.jsonl"
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    for iters in ("5", "6"):
        res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", iters])
        assert res.exit_code == 0, res.output
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_resume_without_config_toml_uses_the_copy_in_latest(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "config.toml").unlink()
    cfg = resumed_config(run, {"train": {"iters": 5}})
    assert cfg.train.batch == tiny_config().train.batch and cfg.train.iters == 5


def test_a_config_toml_missing_a_section_is_refused_not_filled_with_defaults(finished, tmp_path):
    run = _copy(finished, tmp_path)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text[: text.index("[train]")])  # [model] only
    with pytest.raises(CartoonganError, match=r"lacks \[train\], \[finetune\]"):
        resumed_config(run)


def _error_line(res, code):
    lines = res.output.strip().splitlines()
    assert res.exit_code == code and "Traceback" not in res.output and len(lines) == 1, res.output
    return " ".join(res.output.split())


def test_a_bad_value_in_the_runs_own_config_toml_is_blamed_on_it_not_on_a_flag(finished, tmp_path):
    """batch = 0 edited into config.toml was refused as `--batch ([train] batch) must be >= 1`,
    naming a flag nobody gave."""
    run = _copy(finished, tmp_path)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("batch = 4", "batch = 0", 1))
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"]), 1)
    own = f"{run / 'config.toml'} holds a value this version refuses (damaged, edited by hand, or from an older version)"
    assert f"{own}: [train] batch must be >= 1, got 0" in said
    assert "--batch" not in said
    # a flag given now overrides the file's value; a bad flag is still the flag's
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5", "--lr", "nan"]), 1)
    assert "[train] batch" in said  # the file's value is still the first problem
    (run / "config.toml").write_text(text.replace("lr = 0.002", "lr = -1.0", 1))
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5", "--lr", "nan"]), 2)
    assert "--lr ([train] lr) must be a finite number > 0, got nan" in said
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"]), 1)
    assert "config.toml holds a value this version refuses" in said and "[train] lr must be a finite number > 0, got -1.0" in said
    (run / "config.toml").unlink()  # the copy latest.pt keeps is checked the same way
    ckpt = load_checkpoint(run / "latest.pt")
    ckpt["cartoongan"]["config"]["train"]["batch"] = 0
    save_checkpoint(run / "latest.pt", ckpt)
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"]), 1)
    assert "latest.pt records holds a value this version refuses ([train] batch must be >= 1, got 0)" in said and "--batch" not in said


def test_a_new_seed_on_resume_is_refused_as_the_run_continues_its_own_random_stream(finished, tmp_path):
    """--seed with --resume was warned as applied and recorded, but the RNG state restored from
    latest.pt made it do nothing."""
    run = _copy(finished, tmp_path)
    before = (run / "config.toml").read_text()
    said = _error_line(runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5", "--seed", "5"]), 2)
    assert "--seed 5: a resumed run continues its own random stream" in said and "drop --seed (the run's is 0)" in said
    assert (run / "config.toml").read_text() == before
    assert resumed_config(run, {"train": {"seed": 0}}).train.seed == 0  # the run's own seed changes nothing
    # a seed edited into config.toml is put back, and said so
    (run / "config.toml").write_text(before.replace("seed = 0", "seed = 7", 1))
    from cartoongan.report import ListReporter

    rep = ListReporter()
    pretrain(resumed_config(run, {"train": {"iters": 5, "seed": 7}}), None, run, rep, resume=True)
    assert any("[train] seed 7 ignored: a resumed run continues its own random stream (seed 0)" in w
               for w in rep.warnings), rep.warnings
    assert not any("seed 0 -> 7" in w for w in rep.warnings) and "seed = 0" in (run / "config.toml").read_text()


@pytest.mark.parametrize("flags,used", [(["--augment-p", "0.7"], [0.7]), (["--augment", "none"], [])],
                         ids=["--augment-p", "--augment none"])
def test_a_new_augmentation_on_resume_takes_effect(finished, tmp_path, monkeypatch, flags, used):
    """The resume warned `[train] augment_p 0.0 -> 0.7` as applied, then restored the p ADA had
    tuned: the new p (or no augmentation) must be what the resumed steps use."""
    import cartoongan.train.trainer as training

    run = _copy(finished, tmp_path)
    ckpt = load_checkpoint(run / "latest.pt")
    ckpt["train_state"]["ada"].update(p=0.3, steps=0)  # as if ADA had tuned p up to 0.3
    save_checkpoint(run / "latest.pt", ckpt)
    seen = []
    monkeypatch.setattr(training, "augment", lambda x, p: (seen.append(p), x)[1])
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5", *flags])
    assert res.exit_code == 0 and "resumed with changed settings" in res.output, res.output
    assert sorted(set(seen)) == used  # one step: no ADA update yet
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["ada_p"] == (used or [0.0])[0]
    assert load_checkpoint(run / "latest.pt")["ada_aug_p"] == (used or [0.0])[0]


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.update(step=-5), "a step >= 0"),
    (lambda m: m.update(step=True), "a step >= 0"),
    (lambda m: m.update(kind=5), "unknown kind of run"),
])
def test_a_latest_with_an_impossible_step_or_kind_is_not_resumed(finished, tmp_path, edit, words):
    run = _copy(finished, tmp_path)
    ckpt = load_checkpoint(run / "latest.pt")
    edit(ckpt["cartoongan"])
    save_checkpoint(run / "latest.pt", ckpt)
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "9"])
    assert res.exit_code == 1 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_the_dataset_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """A relative --data resumed from another folder must not pick up that folder's data/."""
    blob_images(tmp_path / "data", n=4)
    monkeypatch.chdir(tmp_path)
    pretrain(tiny_config(iters=1), "data", tmp_path / "run")
    recorded = load_checkpoint(tmp_path / "run" / "latest.pt")["cartoongan"]["provenance"]["data"]
    assert recorded == str(tmp_path / "data")


def test_a_resume_whose_recorded_dataset_moved_says_it_is_the_records_and_how_to_go_on(finished, tmp_path):
    run = _copy(finished, tmp_path)
    recorded = Path(load_checkpoint(run / "latest.pt")["cartoongan"]["provenance"]["data"])
    moved = shutil.copytree(recorded, tmp_path / "moved")
    ckpt = load_checkpoint(run / "latest.pt")
    ckpt["cartoongan"]["provenance"]["data"] = str(tmp_path / "gone")  # the folder it was trained on, moved
    save_checkpoint(run / "latest.pt", ckpt)
    res = runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5"])
    assert res.exit_code == 1 and f"{run} was trained on {tmp_path / 'gone'}, which is no longer there: put it " \
        "back, or pass --data" in res.output, res.output
    assert runner.invoke(app, ["pretrain", "--resume", str(run), "--iters", "5", "--data", str(moved)]).exit_code == 0


def test_signals_during_a_save_wait_for_the_file(tmp_path, monkeypatch):
    """Ctrl-Cs and a SIGTERM mid-save take effect once the file is whole (SIGTERM first), and the
    handlers are the caller's again afterwards."""
    seen = []

    def handler(signum, frame):
        seen.append((signal.Signals(signum).name, (tmp_path / "c.pt").exists()))

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    real = checkpoint_module._torch_save

    def interrupted(obj, fh):
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            signal.raise_signal(sig)
        real(obj, fh)

    monkeypatch.setattr(checkpoint_module, "_torch_save", interrupted)
    try:
        save_checkpoint(tmp_path / "c.pt", {"x": 1})
        restored = [signal.getsignal(sig) is handler for sig in (signal.SIGINT, signal.SIGTERM)]
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    assert seen == [("SIGTERM", True), ("SIGINT", True), ("SIGINT", True)] and restored == [True, True]
    assert torch.load(tmp_path / "c.pt") == {"x": 1}


class SignalOnTheTrainingBar(NullReporter):
    """Raises `signum` as the training bar advances for the `at`-th time (None: its last), that is
    after that step's stop check and save."""

    def __init__(self, signum: int, at: int | None = None):
        self.signum, self.at = signum, at

    @contextlib.contextmanager
    def progress(self, total, description, completed=0):
        if description != "pretrain":  # loading the data
            with super().progress(total, description, completed) as bar:
                yield bar
            return
        signum, at = self.signum, total - completed if self.at is None else self.at

        class Bar:
            advances = 0

            def advance(self, n=1, **fields):
                self.advances += 1
                if self.advances == at:
                    signal.raise_signal(signum)
        yield Bar()


def test_a_ctrl_c_landing_after_a_steps_save_check_still_saves_the_step_it_stops_at(tmp_path):
    """The stop flag was read twice per step: a Ctrl-C landing between the save check and the
    break (here, as the progress bar advances) stopped the run with that step unsaved, and before
    the first checkpoint with nothing saved (CI saw "interrupted at step 5" without --resume).
    Now the step's one reading decides: the run goes one step on, saves it and stops there."""
    data = blob_images(tmp_path / "data", n=4)
    result = pretrain(tiny_config(iters=50, ckpt_every=100, sample_every=100, log_every=100), data, tmp_path / "run",
                      SignalOnTheTrainingBar(signal.SIGINT, at=1))
    assert result.interrupted and result.latest == tmp_path / "run" / "latest.pt"
    assert result.step == 2 and load_checkpoint(result.latest)["cartoongan"]["step"] == 2


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_either_signal_asks_to_stop_and_only_a_second_ctrl_c_stops_at_once(first):
    """A launcher may deliver one SIGTERM twice (a scheduler signals every process, torchrun passes
    its own on): that must not stop the run at once, unsaved. A second Ctrl-C is the user's."""
    from cartoongan.train.trainer import _StopFlag

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _StopFlag() as stop:
        signal.raise_signal(first)
        assert stop.requested
        signal.raise_signal(signal.SIGTERM)  # still only asks
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_stop_asked_for_during_the_last_step_is_reported(tmp_path):
    """The last step read the stop flag before its samples, KID and save, the longest part of a
    run: a SIGTERM landing there was dropped, and demo or ablation went on to the next stage."""

    data = blob_images(tmp_path / "data", n=4)
    result = pretrain(tiny_config(iters=2, ckpt_every=100, sample_every=100, log_every=100), data, tmp_path / "run",
                      SignalOnTheTrainingBar(signal.SIGTERM))
    assert result.interrupted and result.step == 2
    assert load_checkpoint(result.latest)["cartoongan"]["step"] == 2


def test_a_stop_during_a_kid_evaluation_ends_it_there_and_saves_that_step(tmp_path, monkeypatch):
    """A stop waited for the evaluation to end, and then for one more step: with a large --eval-n,
    minutes, past the SIGKILL a scheduler sends some seconds after its SIGTERM. Now the stop cuts
    the evaluation short (it changes nothing of the run's state), and the step is logged and saved."""
    from cartoongan.report import ListReporter
    from cartoongan.train import evaluate

    from .test_metrics import stub_features

    went_on = []

    def features(images, reporter=None, description=""):
        if description == "features of g_ema":
            signal.raise_signal(signal.SIGTERM)
            went_on.append(description)
        return stub_features(images)

    monkeypatch.setattr(evaluate, "default_features", lambda device: features)
    data, reporter = blob_images(tmp_path / "data", n=4), ListReporter()
    result = pretrain(tiny_config(iters=6, eval_every=2, eval_n=4, ckpt_every=100, sample_every=100, log_every=100),
                      data, tmp_path / "run", reporter)
    assert went_on == [] and result.interrupted and result.step == 2
    assert load_checkpoint(result.latest)["cartoongan"]["step"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and "kid" not in rows[0] and "loss_g" in rows[0]
    assert any("cut step 2's KID evaluation short" in w for w in reporter.warnings), reporter.warnings


def test_the_logged_throughput_leaves_out_the_time_of_sample_grids_and_kid(tmp_path, monkeypatch):
    """img_per_s is the training's speed: the row after an evaluation counted the KID's minutes
    as training time, and a row written as a stop cut the KID short counted it too. On a clock
    that only a training step (1 s) and a KID (1000 s) move, every row reads batch / 1 s."""
    from cartoongan.train import evaluate, trainer

    from .test_metrics import stub_features

    clock = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
    step = trainer.Trainer.train_step

    def one_second_step(self):
        step(self)
        clock[0] += 1

    def slow_features(images, reporter=None, description=""):
        clock[0] += 1000
        if description == "features of g_ema":
            evaluations.append(description)
            if len(evaluations) == 2:
                signal.raise_signal(signal.SIGTERM)  # the second evaluation, at step 4, is cut short
        return stub_features(images)

    evaluations = []
    monkeypatch.setattr(trainer.Trainer, "train_step", one_second_step)
    monkeypatch.setattr(evaluate, "default_features", lambda device: slow_features)
    cfg = tiny_config(iters=8, eval_every=2, eval_n=4, ckpt_every=100, sample_every=3, log_every=3)
    result = pretrain(cfg, blob_images(tmp_path / "data", n=4), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    speeds = {r["step"]: r["img_per_s"] for r in rows if "img_per_s" in r}
    assert result.step == 4 and speeds == {3: cfg.train.batch, 4: cfg.train.batch}


def test_only_a_stretch_marked_cut_short_is_ended_by_the_first_stop():
    from cartoongan.train.trainer import _EvaluationCut, _StopFlag

    with _StopFlag() as stop:
        with pytest.raises(_EvaluationCut), stop.cut_short():
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # outside: only asks again
        with pytest.raises(_EvaluationCut), stop.cut_short():  # asked for before it: not begun
            pytest.fail("a stretch begun after the stop")
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def _two_ranks(target, data, tmp_path, within: float = 300) -> list[dict]:
    """`target` run as ranks 0 and 1 (spawned, gloo): what each wrote to rankN.json, once both ended."""
    import torch.multiprocessing as mp

    ranks = mp.start_processes(target, args=(2, free_port(), data, tmp_path), nprocs=2, join=False,
                               start_method="spawn")
    deadline = time.monotonic() + within
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("a rank never finished: the ranks did not stop at the same step")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_stop_together_when_the_ctrl_c_reaches_only_one(tmp_path):
    """torchrun forwards a Ctrl-C to each worker at its own moment. A rank that stopped alone left
    the others in the next gradient all-reduce, unsaved, until torchrun killed them. Here only
    rank 1 is interrupted (after step 1): both ranks stop after step 3, the step after the vote
    that carries it, and rank 0 saves that step."""
    data = blob_images(tmp_path / "data", n=8)
    results = _two_ranks(_rank_interrupted_alone, data, tmp_path)
    assert results == [{"step": 3, "interrupted": True}] * 2
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["cartoongan"]["step"] == 3


def _rank_interrupted_alone(rank, world, port, data, out):
    import torch.distributed as dist

    launch_as_rank(rank, world, port)
    reporter = SignalOnTheTrainingBar(signal.SIGINT, at=1) if rank == 1 else NullReporter()
    cfg = tiny_config(iters=50, batch=4, ckpt_every=100, sample_every=100, log_every=100)
    result = pretrain(cfg, data, out / "run", reporter)
    (out / f"rank{rank}.json").write_text(json.dumps({"step": result.step, "interrupted": result.interrupted}))
    dist.destroy_process_group()


def test_when_rank_0_refuses_to_start_every_rank_stops_with_it(tmp_path):
    """Rank 0 alone takes the run's lock. Another process took it while the data loaded, so rank 0
    stopped with its line, and rank 1, waiting in its first collective, died in a page of c10d's
    C++ frames once rank 0's store closed (or was killed by torchrun): now it stops with a line
    saying why, and nothing of the run is written."""
    data = blob_images(tmp_path / "data", n=8)
    results = _two_ranks(_rank_refused, data, tmp_path, within=120)
    assert "is being trained by another process" in results[0]["error"], results
    assert results[1]["error"].startswith("another rank could not start the run (rank 0's line says why)"), results
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


def _rank_refused(rank, world, port, data, out):
    import torch.distributed as dist

    from cartoongan.errors import CartoonganError
    from cartoongan.outputs import lock_with_pid
    from cartoongan.train import runs

    launch_as_rank(rank, world, port)
    load, held = runs.load_dataset, []

    def load_while_another_takes_the_lock(*args, **kwargs):
        (out / "run").mkdir(exist_ok=True)
        held.append(open(out / "run" / ".lock", "a+"))  # a lock of its own: flock's are per open file
        assert lock_with_pid(held[0]) is None
        return load(*args, **kwargs)

    if rank == 0:
        runs.load_dataset = load_while_another_takes_the_lock
    try:
        pretrain(tiny_config(iters=4, batch=4), data, out / "run")
        message = None
    except CartoonganError as exc:
        message = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps({"error": message}))
    dist.destroy_process_group()


def test_a_stop_during_rank_0s_kid_evaluation_stops_every_rank_at_that_step(tmp_path):
    """Rank 0 alone evaluates, while the others wait for it. A SIGTERM cutting its evaluation short
    is voted on at once, by every rank: all stop after that step (2), not after the next one."""
    data = blob_images(tmp_path / "data", n=8)
    results = _two_ranks(_rank_stopped_in_its_evaluation, data, tmp_path)
    assert results == [{"step": 2, "interrupted": True}] * 2
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["cartoongan"]["step"] == 2


def _signalled_features(images, reporter=None, description=""):
    from .test_metrics import stub_features

    if description == "features of g_ema":
        signal.raise_signal(signal.SIGTERM)
    return stub_features(images)


def _rank_stopped_in_its_evaluation(rank, world, port, data, out):
    import torch.distributed as dist

    from cartoongan.train import evaluate

    launch_as_rank(rank, world, port)
    evaluate.default_features = lambda device: _signalled_features
    cfg = tiny_config(iters=50, batch=4, eval_every=2, eval_n=4, ckpt_every=100, sample_every=100, log_every=100)
    result = pretrain(cfg, data, out / "run")
    (out / f"rank{rank}.json").write_text(json.dumps({"step": result.step, "interrupted": result.interrupted}))
    dist.destroy_process_group()


def test_a_stop_voted_by_another_rank_skips_rank_0s_kid_evaluation(tmp_path):
    """Rank 1 was interrupted after step 1; the vote stops the run at step 3, where a KID is due.
    Rank 0's own flag is not set, so the evaluation ran whole (minutes, with a large --eval-n)
    before the save."""
    data = blob_images(tmp_path / "data", n=8)
    results = _two_ranks(_rank_1_stopped_before_an_evaluation, data, tmp_path)
    assert results == [{"step": 3, "interrupted": True}] * 2
    assert not (tmp_path / "evaluated").exists()


def _marking_features(images, reporter=None, description=""):
    from .test_metrics import stub_features

    if description == "features of g_ema":
        (Path(os.environ["CARTOONGAN_TEST_OUT"]) / "evaluated").write_text("KID of g_ema")
    return stub_features(images)


def _rank_1_stopped_before_an_evaluation(rank, world, port, data, out):
    import torch.distributed as dist

    from cartoongan.train import evaluate

    launch_as_rank(rank, world, port)
    os.environ["CARTOONGAN_TEST_OUT"] = str(out)
    evaluate.default_features = lambda device: _marking_features
    reporter = SignalOnTheTrainingBar(signal.SIGTERM, at=1) if rank == 1 else NullReporter()
    cfg = tiny_config(iters=50, batch=4, eval_every=3, eval_n=4, ckpt_every=100, sample_every=100, log_every=100)
    result = pretrain(cfg, data, out / "run", reporter)
    (out / f"rank{rank}.json").write_text(json.dumps({"step": result.step, "interrupted": result.interrupted}))
    dist.destroy_process_group()


def test_numbered_checkpoints_go_by_step_past_a_million(tmp_path):
    from cartoongan.train.runs import numbered_checkpoints

    (tmp_path / "checkpoints").mkdir()
    for name in ("990000.pt", "1000000.pt", "notes.pt", "1\u00b2.pt"):  # ² passes str.isdigit, not int()
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["990000.pt", "1000000.pt"]


def test_ctrl_c_while_the_app_imports_is_one_line(monkeypatch, capsys):
    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "cartoongan_cli.app":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "cartoongan_cli.app")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        cartoongan_cli.main()
    assert stop.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_the_imports_is_held_till_they_are_whole_then_one_line(monkeypatch, capsys, signum):
    """torch's and numpy's import code swallowed a Ctrl-C half-way (the command then ran to its
    end, exit 0, or a RecursionError came out of a later import), and a SIGTERM before the app's
    handler killed the process silently. Here the import swallows what reaches it, as theirs did."""
    class Swallowing:
        def find_spec(self, name, path=None, target=None):
            if name == "cartoongan_cli.app":
                try:
                    signal.raise_signal(signum)
                except KeyboardInterrupt:
                    pass
            return None

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(sys, "argv", ["cartoongan", "--version"])  # what would run, were the signal lost
    monkeypatch.delitem(sys.modules, "cartoongan_cli.app")
    monkeypatch.setattr(sys, "meta_path", [Swallowing(), *sys.meta_path])
    try:
        with pytest.raises(SystemExit) as stop:
            cartoongan_cli.main()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stop.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_a_signal_while_the_arguments_are_parsed_is_one_line(monkeypatch, capsys):
    """A Ctrl-C or SIGTERM landing while typer parses the arguments (its lazy imports: 150 ms, after
    the import-time block) became typer's silent Exit(130): 1 to 4 in 12-29 tries gave no word."""
    from typer.core import TyperGroup

    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(TyperGroup, "parse_args", interrupted)
    monkeypatch.setattr(sys, "argv", ["cartoongan", "info", "x.pt"])
    with pytest.raises(SystemExit) as stop:
        cartoongan_cli.main()
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == "error: interrupted"


def test_a_signal_while_typer_builds_the_commands_is_one_line(monkeypatch, capsys):
    """A SIGTERM landing while typer builds its command tree (from the type hints: 14 ms idle, far
    longer under load), before OneLineErrors.main's own catch, came out as a traceback."""
    import typer.main

    def interrupted(app):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", interrupted)
    monkeypatch.setattr(sys, "argv", ["cartoongan", "info", "x.pt"])
    with pytest.raises(SystemExit) as stop:
        cartoongan_cli.main()
    assert stop.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


@pytest.mark.parametrize("ckpt_every,words", [(2, "latest.pt holds step 2: continue with --resume"),
                                              (100, "nothing was saved yet: the same command starts the run again")])
def test_a_second_ctrl_c_says_what_the_run_kept_and_that_holds(tmp_path, monkeypatch, ckpt_every, words):
    """A second Ctrl-C stops at once, mid-step: the line names the step it left unsaved and what the
    run can do next, and doing that works."""
    from cartoongan.train.trainer import Trainer

    recipe = tmp_path / "r.toml"
    recipe.write_text((Path(cartoongan_cli.__file__).parents[1] / "recipes" / "tiny.toml").read_text()
                      .replace("ckpt_every = 10", f"ckpt_every = {ckpt_every}"))
    data = blob_images(tmp_path / "data", n=4)
    run = tmp_path / "run"
    real = Trainer.train_step

    def stopped_at_three(self):
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C ...
            signal.raise_signal(signal.SIGINT)  # ... and the second, mid-step: _StopFlag raises KeyboardInterrupt
        real(self)

    monkeypatch.setattr(Trainer, "train_step", stopped_at_three)
    command = ["pretrain", "--data", str(data), "--out", str(run), "--recipe", str(recipe), "--iters", "4"]
    res = runner.invoke(app, command)
    assert res.exit_code == 130 and res.output.count("error:") == 1, res.output
    assert "stopped at once at step 3" in res.output and words in " ".join(res.output.split()), res.output
    monkeypatch.setattr(Trainer, "train_step", real)
    res = runner.invoke(app, ["pretrain", "--resume", str(run)] if ckpt_every == 2 else command)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == 4


def test_a_second_ctrl_c_held_through_the_stop_save_names_the_step_it_saved(tmp_path, monkeypatch):
    """The usual double Ctrl-C: the second arrives while the first one's save is written, is held
    until latest.pt is whole, and is raised then: the line says latest.pt holds that step."""
    from cartoongan.train.trainer import Trainer

    real_step, real_save = Trainer.train_step, run_dir_module.save_checkpoint

    def first_ctrl_c_at_three(self):
        real_step(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C

    def second_ctrl_c_replayed(path, ckpt):
        real_save(path, ckpt)
        raise KeyboardInterrupt  # as _signals_deferred replays it, once the file is whole

    monkeypatch.setattr(Trainer, "train_step", first_ctrl_c_at_three)
    monkeypatch.setattr(run_dir_module, "save_checkpoint", second_ctrl_c_replayed)
    run = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--data", str(blob_images(tmp_path / "data", n=4)), "--out", str(run),
                              "--recipe", "tiny", "--iters", "6"])
    text = " ".join(res.output.split())
    assert res.exit_code == 130 and "stopped at once after step 3" in text and "holds step 3" in text, res.output
    assert load_checkpoint(run / "latest.pt")["cartoongan"]["step"] == 3


def test_a_ctrl_c_before_the_training_loop_is_plain_interrupted(tmp_path, monkeypatch):
    def ctrl_c(self, cfg, step=0, numbered=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_dir_module.RunDirectory, "start", ctrl_c)
    res = runner.invoke(app, ["pretrain", "--data", str(blob_images(tmp_path / "data", n=4)), "--out",
                              str(tmp_path / "run"), "--recipe", "tiny", "--iters", "2"])
    # the loop never started: no step to name, and no "second Ctrl-C"
    assert res.exit_code == 130 and res.output.strip().splitlines()[-1] == "error: interrupted", res.output


def test_ctrl_c_in_the_demo_stops_it_and_says_to_run_the_demo_again(tmp_path, monkeypatch):
    """A first Ctrl-C during the demo's fine-tune saved and returned; the demo went on to swap and
    sample a half-trained model. It stops there now, saying how to continue (the demo has no
    --resume), and running it again does continue."""
    from cartoongan.errors import Interrupted
    from cartoongan.pipelines import demo
    from cartoongan.train.trainer import Trainer

    real_step = Trainer.train_step

    def ctrl_c_at_two(self):
        real_step(self)
        if self.step == 2 and self.kind == "finetune":
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_at_two)
    src = tmp_path / "src.pt"
    shutil.copy(_tiny_source(tmp_path), src)
    with pytest.raises(Interrupted, match=r"interrupted at step 2; saved .*: run the demo again with --out") as exc:
        demo.run_demo(tmp_path / "demo", source=src, finetune_iters=4, n_cartoon=8, seeds=[0])
    assert isinstance(exc.value, KeyboardInterrupt) and not (tmp_path / "demo" / "compare.png").exists()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    result = demo.run_demo(tmp_path / "demo", source=src, finetune_iters=4, n_cartoon=8, seeds=[0])
    assert result.compare.is_file() and load_checkpoint(result.cartoon)["cartoongan"]["step"] == 4


def test_ctrl_c_between_the_demos_training_and_its_pictures_says_to_run_it_again(tmp_path, monkeypatch):
    """Stopped in the swap (a plain Ctrl-C) or while sampling (which says what it wrote): both lines
    end with how to go on, and the demo run again finishes from the fine-tuned model."""
    from cartoongan.data import images
    from cartoongan.errors import Interrupted
    from cartoongan.pipelines import demo

    src = tmp_path / "src.pt"
    shutil.copy(_tiny_source(tmp_path), src)
    args = dict(source=src, finetune_iters=2, n_cartoon=8, seeds=[0, 1])
    monkeypatch.setattr(images, "image_threads", lambda: 1)  # one writer: the count below is exact
    real_swap, real_save = demo.swap_checkpoints, images.save_png
    monkeypatch.setattr(demo, "swap_checkpoints", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(Interrupted) as exc:
        demo.run_demo(tmp_path / "demo", **args)
    assert str(exc.value) == f"interrupted: run the demo again with --out {tmp_path / 'demo'} to continue"
    monkeypatch.setattr(demo, "swap_checkpoints", real_swap)
    monkeypatch.setattr(images, "save_png", stops_after(2, real_save))
    with pytest.raises(Interrupted) as exc:
        demo.run_demo(tmp_path / "demo", **args)
    assert str(exc.value).startswith("interrupted after 2 of 6 images, each written to ")
    assert str(exc.value).endswith(f"compare.png was not: run the demo again with --out {tmp_path / 'demo'} to continue")
    monkeypatch.setattr(images, "save_png", real_save)
    assert demo.run_demo(tmp_path / "demo", **args).compare.is_file()


def test_a_demo_run_again_with_another_source_does_not_reuse_the_first_ones_cartoon_model(tmp_path):
    """The rerun said "fine-tuned model already at step 1" and swapped and sampled the new source
    beside a cartoon model fine-tuned from the old one, without a word. And a --source without D
    was sent to finetune's --fresh-d, which demo lacks, after the cartoon set was drawn."""
    from cartoongan.errors import CheckpointError, ConfigError
    from cartoongan.pipelines import demo

    src = _tiny_source(tmp_path)
    args = dict(finetune_iters=1, n_cartoon=4, seeds=[0])
    first = demo.run_demo(tmp_path / "demo", source=src, **args)
    picture = first.compare.read_bytes()
    with pytest.raises(ConfigError, match=r"is not the model .*finetune was fine-tuned from .*choose another --out"):
        demo.run_demo(tmp_path / "demo", source=demo.BUNDLED_SOURCE, **args)
    assert first.compare.read_bytes() == picture
    no_d = load_checkpoint(src)
    del no_d["d"]
    save_checkpoint(tmp_path / "no_d.pt", no_d)
    with pytest.raises(CheckpointError, match=r"has no discriminator \('d'\): the demo fine-tunes the source's G and D"):
        demo.run_demo(tmp_path / "other", source=tmp_path / "no_d.pt", **args)
    assert not (tmp_path / "other").exists()


def test_a_demo_stopped_after_pretraining_its_source_uses_that_source_when_run_again(tmp_path, monkeypatch):
    """With no bundled source the demo pretrains one. Stopped in a later stage, the demo run
    again resumed the finished pretraining, which is refused as having nothing to do, so the demo
    could never finish. A finished stage is now used as it is."""
    from cartoongan.errors import Interrupted
    from cartoongan.pipelines import demo
    from cartoongan.train.trainer import Trainer

    real_step = Trainer.train_step

    def ctrl_c_in_the_finetune(self):
        real_step(self)
        if self.kind == "finetune":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(demo, "BUNDLED_SOURCE", tmp_path / "no-bundled-source.pt")
    monkeypatch.setattr(demo, "N_PHOTO", 8)
    monkeypatch.setattr(Trainer, "train_step", ctrl_c_in_the_finetune)
    kwargs = dict(finetune_iters=2, n_cartoon=8, seeds=[0], pretrain_iters=1)
    with pytest.raises(Interrupted, match="run the demo again"):
        demo.run_demo(tmp_path / "demo", **kwargs)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    result = demo.run_demo(tmp_path / "demo", **kwargs)
    assert result.source == tmp_path / "demo" / "source" / "latest.pt"
    assert load_checkpoint(result.source)["cartoongan"]["step"] == 1
    assert result.compare.is_file() and load_checkpoint(result.cartoon)["cartoongan"]["step"] == 2


def _tiny_source(tmp_path):
    """A 64 px photo-domain checkpoint of the demo's architecture, briefly pretrained."""
    from cartoongan.config import load_recipe

    cfg = load_recipe("demo64")
    cfg.train.iters, cfg.train.batch = 1, 2
    return pretrain(cfg, blob_images(tmp_path / "photos", n=4, size=64), tmp_path / "source").latest


def test_a_pipeline_stage_stopped_by_ctrl_c_carries_the_pipelines_own_hint(tmp_path):
    """run_to_end, as demo and ablation run their stages: a finished stage gives its latest.pt; a
    first Ctrl-C (the stage saved and returned) and a second (the trainer's Interrupted) both stop
    the pipeline with its hint in place of --resume."""
    from cartoongan.errors import Interrupted
    from cartoongan.train.runs import run_to_end
    from cartoongan.train.trainer import TrainResult

    done = TrainResult(tmp_path, 4, latest=tmp_path / "latest.pt")
    assert run_to_end(lambda: done, "again") == tmp_path / "latest.pt"
    stopped = TrainResult(tmp_path, 2, interrupted=True, latest=tmp_path / "latest.pt")
    with pytest.raises(Interrupted, match=r"^interrupted at step 2; saved .*latest.pt: run the ablation again$"):
        run_to_end(lambda: stopped, "run the ablation again")

    def second_ctrl_c():
        raise Interrupted("stopped at once at step 3 (a second Ctrl-C); x holds step 2", "continue with --resume R")

    with pytest.raises(Interrupted, match=r"holds step 2: run the ablation again$") as exc:
        run_to_end(second_ctrl_c, "run the ablation again")
    assert "--resume" not in str(exc.value) and isinstance(exc.value, KeyboardInterrupt)


def test_a_sigterm_ends_sample_as_a_ctrl_c_does(tmp_path):
    """`kill` or a scheduler's SIGTERM used to end sample silently (exit 143), without a word of
    the images written. Now it says so, as for a Ctrl-C, and the PNGs on disk are whole."""
    import subprocess

    from PIL import Image

    from cartoongan import Generator
    from cartoongan.weights.networks import generator_checkpoint

    from .conftest import TINY

    ckpt = save_checkpoint(tmp_path / "g.pt", generator_checkpoint(Generator(16, **TINY)))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "cartoongan_cli", "sample", str(ckpt), "--seeds", "0-99999",
                             "--device", "cpu", "--outdir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and len(list(out.glob("seed*.png"))) >= 8) and proc.poll() is None:
        assert time.monotonic() < deadline, "sample wrote no image in 2 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    said = " ".join(err.split())
    assert proc.returncode == 130 and "interrupted after" in said and "grid.png was not" in said, (proc.returncode, err)
    assert "Traceback" not in err and not (out / "grid.png").exists()
    for png in out.glob("seed*.png"):
        with Image.open(png) as img:
            img.load()  # whole files only: each was written before the signal took effect


@pytest.mark.parametrize("torchrun", [False, True], ids=["a command", "a torchrun worker"])
def test_sigterm_is_taken_as_ctrl_c_outside_torchruns_workers(monkeypatch, torchrun):
    """A worker blocked in a rendezvous or an NCCL wait runs no Python handler: torchrun's SIGTERM
    must end it at once there, as before (its training steps have their own stop flag)."""
    from cartoongan_cli import app as app_module

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(app_module, "app", lambda: None)
    if torchrun:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    try:
        app_module.main()
        installed = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert (installed is app_module._terminated) is not torchrun


def test_the_bars_speed_is_the_sessions_mean_not_the_last_rows(tmp_path, monkeypatch):
    """The bar's img_per_s was the last log row's: a fine-tune that averaged 9.5 img/s ended on a
    line reading 40. On a clock where step 1 takes 10 s and the others 1 s (and a sample grid 100 s),
    the log keeps each row's speed and the bar shows the mean of the training time."""
    import contextlib

    from cartoongan.report import ListReporter
    from cartoongan.train import run_dir, trainer

    clock, shown = [0.0], []
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock[0])
    step, save_samples = trainer.Trainer.train_step, run_dir.RunDirectory.save_samples

    def timed_step(self):
        step(self)
        clock[0] += 10 if self.step == 1 else 1

    def slow_grid(self, *args, **kwargs):
        clock[0] += 100
        return save_samples(self, *args, **kwargs)

    class Bars(ListReporter):
        @contextlib.contextmanager
        def progress(self, total, description, completed=0):
            yield type("Bar", (), {"advance": lambda self, n=1, **fields: shown.append(fields)})()

    monkeypatch.setattr(trainer.Trainer, "train_step", timed_step)
    monkeypatch.setattr(run_dir.RunDirectory, "save_samples", slow_grid)
    cfg = tiny_config(iters=4, ckpt_every=100, sample_every=2, log_every=1)
    pretrain(cfg, blob_images(tmp_path / "data", n=4), tmp_path / "run", Bars())
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["img_per_s"] == cfg.train.batch  # the last step's own speed, as before
    assert [f for f in shown if f][-1]["img_per_s"] == pytest.approx(4 * cfg.train.batch / 13)
