"""What `ltpipe train` tells its user: Ctrl-C says what was saved and how to go on (exit 130),
a resume says where it starts, console and metrics.jsonl number epochs alike, and `ltpipe
--version`."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from tiny_train import FAST as TINY_FAST
from tiny_train import STOPPED_AT, write_tiny

FAST = [*TINY_FAST, "--lr", "0.05", "--mixer", "none", "--loss", "ce", "--epochs", "2"]
TRAIN = [sys.executable, "-m", "ltpipe.train"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("shards") / "tiny")


def ctrl_c_at(step, *args):
    """Run `ltpipe train` in its own process group, which gets SIGINT right after optimizer
    step ``step``, as a terminal's Ctrl-C reaches the command and its loader workers; returns
    (exit status, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, STOPPED_AT, str(step), "ctrl-c",
                             *(str(a) for a in args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:  # whatever is left of the group (nothing, when the run exits as it should)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, err


def console_epochs(stdout):
    """The epoch numbers of the console's epoch lines, "epoch 0 (1/2): ..." -> [0, ...]."""
    return [int(m.group(1)) for m in re.finditer(r"^epoch (\d+) \((\d+)/2\): ", stdout, re.M)]


def test_ctrl_c_says_what_was_saved_and_the_resume_continues(shards, tmp_path):
    run = tmp_path / "run"
    # checkpoints after steps 4, 6 (epoch end) and 8; Ctrl-C after step 10, mid-epoch 1
    code, out, err = ctrl_c_at(10, shards, "--out", run, "--ckpt-every", "4", *FAST)
    assert code == 130, err[-2000:]
    assert err.splitlines() == [
        f"ltpipe train: interrupted; saved {run}/ckpt/last.pt at epoch 1 (2/2), step 8",
        f"continue with: python -m ltpipe.train --resume {run}"], err
    assert console_epochs(out) == [0]  # the console's epoch 0 is metrics.jsonl's
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] \
        == [0]
    ckpt = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (1, 8, 2)

    # a CPU run recorded before config.toml said fp32 (bf16 and a compute stream): same run
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace('precision = "fp32"', 'precision = "bf16"\n'
                                           'compute_stream = "high"'))
    ckpt["config"]["train"].update(precision="bf16", compute_stream="high")
    torch.save(ckpt, run / "ckpt" / "last.pt")
    res = subprocess.run([*TRAIN, "--resume", run], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0] == f"resuming {run} at epoch 1 (2/2), step 8"
    assert console_epochs(res.stdout) == [1]
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] \
        == [0, 1]
    assert res.stdout.splitlines()[-1] == (f"wrote {run}/final.json, {run}/per_class.png and "
                                           f"{run}/final.pt (per epoch: {run}/metrics.jsonl)")


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(shards, tmp_path):
    run = tmp_path / "run"
    code, _, err = ctrl_c_at(2, shards, "--out", run, *FAST)
    assert code == 130, err[-2000:]
    assert err.splitlines() == ["ltpipe train: interrupted; nothing saved yet",
                                f"start again with: python -m ltpipe.train --resume {run}"]
    assert "Aborted" not in err and not (run / "ckpt" / "last.pt").exists()


def test_under_torchrun_only_rank_0_says_it(tmp_path, monkeypatch, capsys):
    from ltpipe.train.train_cli import interrupted

    monkeypatch.setattr(sys, "argv", ["/repo/train/__main__.py", "s", "--out", "r"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    said = [f"ltpipe train: interrupted; saved {tmp_path}/ckpt/last.pt at the start of epoch 3 "
            "(4/30), step 60",
            f"continue with: torchrun --nproc_per_node=2 -m ltpipe.train --resume {tmp_path}"]
    for rank, lines in (("1", []), ("0", said)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            interrupted(tmp_path, (3, 60, 0), 30, resumable=True)
        assert exc.value.code == 130
        assert capsys.readouterr().err.splitlines() == lines


def test_version_is_ltpipes_without_importing_torch():
    from ltpipe.shards import __version__

    code = ("import sys; from click.testing import CliRunner; from ltpipe.train.cli import main;"
            "r = CliRunner().invoke(main, ['--version']); assert r.exit_code == 0, r.output;"
            "print(r.output, end=''); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == f"ltpipe, version {__version__}\n"
