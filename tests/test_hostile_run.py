"""`ltpipe train` while things go wrong around it: a run that diverges stops (it never looks
finished), every JSON it writes is strict, --out cannot mix with the shards or be a name the file
system or config.toml cannot hold, and SIGTERM is Ctrl-C's twin (one line, the resume hint, the
lock released, exit 143). Kills are real signals: sent by the test, or by tests/train_stopped_at.py
at an exact step; the product carries no test hooks."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from tiny_train import FAST as TINY_FAST
from tiny_train import STOPPED_AT, invoke, write_tiny

FAST = [*TINY_FAST, "--mixer", "none", "--loss", "ce"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("shards") / "tiny")


def train_process(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ltpipe.train", *(str(a) for a in args)],
                          capture_output=True, text=True, timeout=300, env=env)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict JSON readers do."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- a run that diverges
# weight decay 1 at learning rate 30 multiplies the weights by -29 a step: every value is in
# range, and the loss is inf or nan in step 8, in epoch 1 (found by trying; the CPU run is exact)
DIVERGES = ["--lr", "30", "--wd", "1", "--momentum", "0", "--epochs", "3", "--ckpt-every", "4",
            *FAST]


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    res = train_process(shards, "--out", run, *DIVERGES)
    assert res.returncode == 3, res.stderr[-2000:]
    assert res.stderr.splitlines() == [
        "ltpipe train: error: the run diverged: the training loss or the weights became nan or "
        "inf in step 8, epoch 1 (2/3), and the run stopped (a lower --lr may help); "
        f"{run}/ckpt/last.pt (the start of epoch 1 (2/3), step 6) is the last good checkpoint; "
        "no final results were written"], res.stderr
    assert "Traceback" not in res.stderr and "wrote" not in res.stdout
    # nothing looks finished; the last checkpoint is from before the divergence
    assert not (run / "final.json").exists() and not (run / "final.pt").exists()
    ckpt = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 6)
    assert all(v.isfinite().all() for v in ckpt["model"].values() if v.is_floating_point())
    lines = [strict_json(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0] and math.isfinite(lines[0]["train_loss"])
    assert not (run / ".ltpipe.lock").exists()
    # the resumed run meets the same step again: it stops there again, changing nothing (the
    # test hooks the trainer once read are gone: these variables change nothing either)
    env = {**os.environ, "LTPIPE_TEST_KILL_AT_STEP": "abc", "LTPIPE_TEST_INTERRUPT_AT_STEP": "7"}
    res = train_process("--resume", run, env=env)
    assert res.returncode == 3 and "in step 8, epoch 1 (2/3)" in res.stderr, res.stderr[-2000:]
    assert not (run / "final.json").exists()
    assert torch.load(run / "ckpt" / "last.pt", weights_only=True)["step"] == 6


def test_a_stopped_run_in_process_leaves_no_tensorboard_writer_behind(shards, tmp_path):
    """A library caller's sweep runs many trainings in one process: one that diverges after its
    first epoch record (TensorBoard open) closes its writer and the writer's thread."""
    import threading

    def writers():
        return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread"]

    before = writers()
    res = invoke(shards, "--out", tmp_path / "run", *DIVERGES)
    assert res.exit_code == 3, res.output
    assert list((tmp_path / "run" / "tb").iterdir())  # it was open
    assert writers() == before


def test_a_run_that_diverges_before_its_first_checkpoint_says_so_and_can_rerun(shards, tmp_path):
    run = tmp_path / "run"
    res = invoke(shards, "--out", run, "--lr", "1000", "--wd", "1", "--epochs", "1", *FAST)
    assert res.exit_code == 3 and res.stderr.count("\n") == 1, res.output
    assert "in step 6, epoch 0 (1/1)" in res.stderr and "no checkpoint was written" in \
        res.stderr, res.stderr
    assert not (run / "metrics.jsonl").exists() and not (run / "ckpt" / "last.pt").exists()
    res = invoke(shards, "--out", run, "--lr", "0.05", "--epochs", "1", *FAST)  # fixed: reruns
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- strict JSON
def test_every_json_the_trainer_writes_is_strict(tmp_path):
    """A nan or inf value is written as null (Python would write bare NaN and Infinity)."""
    from ltpipe.bench.harness import write_result
    from ltpipe.train.report import METRICS, RunReport

    report = RunReport(tmp_path, enabled=True, tensorboard=False)
    report.epoch({"epoch": 0, "train_loss": float("nan"), "lr": float("inf"), "top1": None})
    assert strict_json((tmp_path / METRICS).read_text()) == \
        {"epoch": 0, "train_loss": None, "lr": None, "top1": None}
    result = {"top1": float("nan"), "many": None, "medium": 50.0, "few": float("-inf"),
              "per_class": [float("nan"), 50.0]}
    with mock.patch("ltpipe.train.report.plot_per_class"):
        report.final(result, [10, 1])
    assert strict_json((tmp_path / "final.json").read_text())["per_class"] == [None, 50.0]
    path = write_result("strict", {"p": 1}, {"ratio": float("nan"), "runs": [1.0, float("inf")]},
                        out_dir=tmp_path, device="cpu")
    assert strict_json(path.read_text())["results"] == {"ratio": None, "runs": [1.0, None]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([METRICS, "final.json",
                                                                 path.name])


# ---------------------------------------------------------------- --out
def test_out_inside_equal_to_or_around_the_shards_is_refused(shards, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(shards)  # the same directory by another name
    for out, says in ((shards / "run", "inside the shard directory"),
                      (shards, "inside the shard directory"),
                      (link / "train" / "run", "inside the shard directory"),
                      (shards.parent, "holds the shard directory")):
        res = invoke(shards, "--out", out, "--epochs", "1", *FAST)
        assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
        assert says in res.stderr and str(out) in res.stderr, res.stderr
    assert sorted(p.name for p in shards.iterdir()) == ["manifest.json", "train", "val"]


def test_resume_refuses_shards_copied_inside_the_run(shards, tmp_path):
    run = tmp_path / "run"
    assert invoke(shards, "--out", run, "--epochs", "1", "--lr", "0.05", *FAST).exit_code == 0
    inside = run / "data"
    shutil.copytree(shards, inside, copy_function=shutil.copy2)  # the same bytes and mtimes
    res = invoke(inside, "--resume", run)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert "holds the shard directory" in res.stderr, res.stderr


@pytest.mark.parametrize("name", ["x" * 300, "x\udcff"], ids=["300 characters", "not UTF-8"])
def test_an_out_the_file_system_or_config_toml_cannot_hold_is_one_line(shards, tmp_path, name):
    """A 300-byte name exceeds the file system's 255; a name that is not UTF-8 (as Python
    passes such bytes) cannot go into config.toml. Nothing is left behind."""
    res = invoke(shards, "--out", tmp_path / name, "--epochs", "1", *FAST)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert "Traceback" not in res.stderr
    assert ("File name too long" if len(name) > 255 else "not valid UTF-8") in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_config_write_leaves_no_temporary_file(shards, tmp_path):
    """A full disk while config.toml is written: one line, and no .config.toml.tmp* left."""
    real = Path.write_text

    def full_disk(self, data, *args, **kw):
        if self.name.startswith(".config.toml.tmp"):
            real(self, data[:10], *args, **kw)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *args, **kw)

    run = tmp_path / "run"
    with mock.patch.object(Path, "write_text", full_disk):
        res = invoke(shards, "--out", run, "--epochs", "1", *FAST)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "No space left" in res.stderr
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert not (run / "config.toml").exists()
    assert invoke(shards, "--out", run, "--epochs", "1", "--lr", "0.05", *FAST).exit_code == 0


# ---------------------------------------------------------------- SIGTERM
def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pgid: int, seconds: float = 20) -> bool:
    """True once no process of the group is left (the loader's workers end with the run)."""
    end = time.monotonic() + seconds
    while group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    return not group_alive(pgid)


def test_sigterm_is_handled_like_ctrl_c(shards, tmp_path):
    """SIGTERM after step 10 (checkpoints at 4, 6 and 8): one line saying what was saved, the
    command that continues, the lock released, exit 143 (tests/test_train_console.py resumes
    after Ctrl-C, the same path)."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, STOPPED_AT, "10", "term", shards, "--out", run,
                           "--epochs", "2", "--lr", "0.05", "--ckpt-every", "4", *FAST],
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"ltpipe train: terminated (SIGTERM); saved {run}/ckpt/last.pt at epoch 1 (2/2), step 8",
        f"continue with: python -m ltpipe.train --resume {run}"], proc.stderr
    assert not (run / ".ltpipe.lock").exists()
    ckpt = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (1, 8, 2)


def test_a_schedulers_sigterm_to_the_process_group(shards, tmp_path):
    """A batch scheduler signals every process of the job: the test sends SIGTERM to the group
    once the first checkpoint appears. The run says what it saved, releases the lock, exits 143,
    and none of the loader's worker processes outlives it."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ltpipe.train", str(shards), "--out", str(run),
                             "--epochs", "50", "--lr", "0.05", "--ckpt-every", "2", *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        end = time.monotonic() + 240
        while not (run / "ckpt" / "last.pt").exists() and proc.poll() is None and \
                time.monotonic() < end:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert wait_gone(proc.pid), "a process of the run outlived it"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-2000:]
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"ltpipe train: terminated (SIGTERM); saved {run}/ckpt/last.pt at ")
    assert lines[1] == f"continue with: python -m ltpipe.train --resume {run}"
    assert not (run / ".ltpipe.lock").exists()
    assert not (run / "final.json").exists()
