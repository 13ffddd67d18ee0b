"""`ltpipe train` end to end on tiny real shards: outputs, learning, bad options, exact resume after
SIGKILL, corrupt/mismatched checkpoints, and a 2-process gloo DDP run."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch
from tiny_train import FAST as TINY_FAST
from tiny_train import STOPPED_AT, invoke, write_tiny

FAST = [*TINY_FAST, "--lr", "0.05"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("shards") / "tiny")


def train_process(*args):
    """A training run in its own process, as users run it (and no DALI workers forked from
    the pytest process)."""
    cmd = [sys.executable, "-m", "ltpipe.train", *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def plain_run(shards, tmp_path_factory):
    """none + ce, 2 epochs: (run dir, CLI result)."""
    run = tmp_path_factory.mktemp("plain") / "run"
    res = train_process(shards, "--out", run, "--epochs", "2", "--mixer", "none", "--loss", "ce",
                        *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    return run, res


def test_none_ce_learns_and_writes_every_output(plain_run):
    run, res = plain_run
    rec = lines(run)
    assert [r["epoch"] for r in rec] == [0, 1]
    assert {"epoch", "lr", "train_loss", "top1", "many", "medium", "few", "images_per_s",
            "seconds", "data_wait_ms_per_step", "device_idle_ms_per_step"} <= set(rec[0])
    for r in rec:  # per-step means, well under the epoch's time per step
        per_step_ms = r["seconds"] * 1e3 / 6  # 6 steps per epoch
        assert 0 <= r["data_wait_ms_per_step"] < per_step_ms
        assert 0 <= r["device_idle_ms_per_step"] < per_step_ms
        # the wait's tail over the epoch's steps: p50 <= p99 <= max, and the mean within them
        assert 0 <= r["data_wait_ms_p50"] <= r["data_wait_ms_p99"] <= r["data_wait_ms_max"]
        assert r["data_wait_ms_per_step"] <= r["data_wait_ms_max"] + 1e-6
    assert rec[1]["train_loss"] < rec[0]["train_loss"]  # it learns
    assert [r["mixed_share"] for r in rec] == [0.0, 0.0]  # mixer none
    final = json.loads((run / "final.json").read_text())
    assert 0 <= final["top1"] <= 100
    assert len(final["per_class"]) == 4 and final["epochs"] == 2 and final["images_per_s"] > 0
    assert final["per_class_named"] == [  # the shards' class names beside each accuracy
        {"class": k, "name": f"class{k}", "n_train": n, "top1": final["per_class"][k]}
        for k, n in enumerate([48, 24, 12, 6])]
    assert final["medium"] is not None and final["few"] is not None and final["many"] is None
    assert (run / "per_class.png").stat().st_size > 0 and list((run / "tb").glob("events.*"))
    cfg = (run / "config.toml").read_text()
    assert 'mixer = "none"' in cfg and "git = " in cfg
    # what the CPU used: fp32, no CUDA stream (not the defaults' bf16 on a high-priority stream)
    assert 'precision = "fp32"' in cfg and "compute_stream" not in cfg
    assert "Few" in res.stdout and "top-1 %" in res.stdout  # the Many/Medium/Few table
    # --no-progress (a batch job's log): an epoch line each, no progress-bar fragments; the
    # epoch as metrics.jsonl numbers it, then of how many
    assert [ln.split(":")[0] for ln in res.stdout.splitlines() if ln.startswith("epoch")] == \
        ["epoch 0 (1/2)", "epoch 1 (2/2)"]
    assert "\r" not in res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == (f"wrote {run}/final.json, {run}/per_class.png and "
                                           f"{run}/final.pt (per epoch: {run}/metrics.jsonl)")


@pytest.mark.parametrize("args,needle", [
    (["--mixer", "nope"], "mixer: unknown 'nope'"),
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--epochs", "abc"], "'--epochs': 'abc' is not a valid integer"),
    (["--recipe", "nope"], "recipe: unknown 'nope'"),
    (["--mixer", "cmo", "--mixer-opt", "foo=1"], "unknown parameter 'foo'"),
    (["--loss", "hinge"], "loss: unknown 'hinge'"),
    (["--mixer", "cmo", "--mixer-opt", "prob=abc"], "prob must be float"),
    (["--mixer", "smc", "--mixer-opt", "views=2.5"], "views must be like its default 2"),
    (["--mixer", "smc", "--mixer-opt", "scale=[0.8, 0.2]"], "scale must satisfy 0 <= lo <= hi"),
    (["--mixer", "smc", "--mixer-opt", "scale=0.5"], "scale must be like its default (0.2, 0.8)"),
    (["--loss", "focal", "--loss-opt", "gamma=[1, 2]"], "gamma must be like its default 1.0"),
    (["--loss", "focal", "--loss-opt", "gamma=-1"], "gamma must be in [0, 100]"),
    (["--loss", "la", "--loss-opt", "tau=-0.5"], "tau must be in [0, 100]"),
    (["--mixer", "cmo", "--m2m-classifier", "runs/x"], "--m2m-classifier: mixer 'cmo' does not"),
    (["--mixer", "m2m", "--m2m-classifier", "nowhere"], "not an ltpipe run directory"),
    (["--loss", "ldam", "--loss-opt", 'scale="a"'], "scale must be like its default 30.0"),
    (["--loss", "ldam", "--loss-opt", "max_m=0.3"], "accepts: max_margin, scale"),
])
def test_bad_options_exit_2_with_one_line(shards, tmp_path, args, needle):
    res = invoke(shards, "--out", tmp_path / "r", *FAST, *args)
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr
    assert not (tmp_path / "r").exists()  # nothing half-made: the fixed command can reuse --out


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--epochs", "abc"]])
def test_under_torchrun_only_rank_0_prints_an_option_error(shards, tmp_path, monkeypatch, args):
    monkeypatch.setenv("RANK", "1")
    res = invoke(shards, "--out", tmp_path / "r", *FAST, *args)
    assert res.exit_code == 2 and res.stderr == ""
    monkeypatch.setenv("RANK", "0")
    res = invoke(shards, "--out", tmp_path / "r", *FAST, *args)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_out_that_is_a_file_is_one_line(shards, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = invoke(shards, "--out", tmp_path / "afile", *FAST)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "--out" in res.stderr and "not a directory" in res.stderr


def test_missing_shards_exit_2(tmp_path):
    res = invoke(tmp_path / "nowhere", "--out", tmp_path / "r", *FAST)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "nowhere" in res.stderr


CMO_RUN = ["--epochs", "2", "--mixer", "cmo", "--mixer-opt", "mix_schedule=\"always\"",
           "--mixer-opt", "prob=0.7", "--ckpt-every", "4", *FAST]
# μ = 0: every epoch after the first takes OT steps, with costs from the feature bank, so a resume
# that lost the bank would pair (and train) differently
OTMIX_BANK_RUN = ["--epochs", "2", "--mixer", "otmix", "--otmix-mode", "bank",
                  "--mixer-opt", "mix_schedule=\"always\"", "--mixer-opt", "prob=0.5",
                  "--mixer-opt", "mu=0.0", "--ckpt-every", "4", *FAST]


def killed_run(args, kill_at_step, log, env=None, launcher=(sys.executable,)):
    """Train with ``args`` until SIGKILL ends the run right after optimizer step
    ``kill_at_step``; ``env`` as the run it is compared with (thread counts change float sums);
    ``launcher``: what starts the script (torchrun: every rank kills itself)."""
    cmd = [*launcher, STOPPED_AT, str(kill_at_step), "kill", *(str(a) for a in args)]
    with open(log, "w") as fh:  # a file, not a pipe: orphaned loader workers would hold a pipe
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=300)
        finally:
            try:  # whatever the kill left of the process group, like the rest of a dead node
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code


@pytest.mark.parametrize("run_args", [CMO_RUN, OTMIX_BANK_RUN], ids=["cmo", "otmix-bank"])
def test_exact_resume_after_sigkill(shards, tmp_path, run_args):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train_process(shards, "--out", full, *run_args).returncode == 0
    # Step 10 is mid-epoch 1 (6 steps per epoch); the last checkpoint was at step 8.
    log = tmp_path / "killed.log"
    assert killed_run([shards, "--out", killed, *run_args], 10, log) == -9, \
        log.read_text()[-2000:]
    ckpt = torch.load(killed / "ckpt" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (1, 8, 2)
    stale = killed / "ckpt" / ".last.pt.tmp4242"  # as a kill during a save leaves it
    stale.write_bytes(b"half a checkpoint")
    res = train_process("--resume", killed, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not stale.exists()
    assert_bitwise_equal(weights(full / "final.pt"), weights(killed / "final.pt"))
    exact = ("train_loss", "mixed_share")
    assert [[r[k] for k in exact] for r in lines(full)] == \
        [[r[k] for k in exact] for r in lines(killed)]
    assert 0 < lines(full)[1]["mixed_share"] < 1  # mixing "always", with p = 0.7 or 0.5


# a Q cache of 39 of the 90 images (16 x 16 x 3 bytes each): steps mix cached and decoded rows
PARTIAL_CACHE = ["--loader-opt", "q_cache_gb=0.00003"]


def test_exact_resume_with_a_partial_q_cache(shards, tmp_path):
    """Killed mid-epoch and resumed with another budget (auto: a cache of every image): the
    resumed run keeps the checkpoint's cache, so it ends with the same weights and metrics,
    the share of Q's draws the cache served included."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    res = train_process(shards, "--out", full, *CMO_RUN, *PARTIAL_CACHE)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Q cache: 39 of 90 images" in res.stdout
    log = tmp_path / "killed.log"
    assert killed_run([shards, "--out", killed, *CMO_RUN, *PARTIAL_CACHE], 10, log) == -9, \
        log.read_text()[-2000:]
    res = train_process("--resume", killed, "--no-progress", "--loader-opt", "q_cache_gb=auto")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Q cache: 39 of 90 images" in res.stdout  # the checkpoint's, not 90 of 90
    assert_bitwise_equal(weights(full / "final.pt"), weights(killed / "final.pt"))
    exact = ("train_loss", "mixed_share", "q_cache_coverage", "q_cache_coverage_expected")
    assert [[r[k] for k in exact] for r in lines(full)] == \
        [[r[k] for k in exact] for r in lines(killed)]
    assert all(0.5 < r["q_cache_coverage"] < 1 for r in lines(full))


def test_resume_before_the_first_checkpoint_starts_over(shards, plain_run, tmp_path):
    """Killed in epoch 0 with no checkpoint yet (config.toml only): --resume trains from the
    start (here with --ckpt-every, which a resume may change) instead of refusing."""
    run = tmp_path / "early"
    args = [shards, "--out", run, "--epochs", "2", "--mixer", "none", "--loss", "ce", *FAST]
    assert killed_run(args, 2, tmp_path / "early.log") == -9
    assert (run / "config.toml").is_file() and not (run / "ckpt" / "last.pt").exists()
    res = train_process("--resume", run, "--ckpt-every", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no checkpoint yet" in res.stderr
    assert [r["train_loss"] for r in lines(run)] == [r["train_loss"] for r in lines(plain_run[0])]
    assert_bitwise_equal(weights(plain_run[0] / "final.pt"), weights(run / "final.pt"))


def test_checkpoints_do_not_change_training(shards, plain_run, tmp_path):
    """--ckpt-every 6 lands on each epoch's last step (6 steps per epoch): same training as
    without it (a checkpoint there once restarted the epoch's loop)."""
    run = tmp_path / "ckpt6"
    res = train_process(shards, "--out", run, "--epochs", "2", "--mixer", "none", "--loss", "ce",
                        "--ckpt-every", "6", *FAST)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["train_loss"] for r in lines(run)] == [r["train_loss"] for r in lines(plain_run[0])]
    assert_bitwise_equal(weights(plain_run[0] / "final.pt"), weights(run / "final.pt"))


def test_resume_from_a_checkpoint_on_an_epochs_last_step(shards, plain_run, tmp_path):
    """Killed right after the checkpoint on epoch 0's last step (6 steps per epoch): the resume
    finishes epoch 0 without training it again, and the run equals the uninterrupted one (it
    once trained epoch 1's steps as the rest of epoch 0)."""
    run = tmp_path / "killed6"
    args = [shards, "--out", run, "--epochs", "2", "--mixer", "none", "--loss", "ce",
            "--ckpt-every", "6", *FAST]
    assert killed_run(args, 6, tmp_path / "killed6.log") == -9
    ckpt = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (0, 6, 6)
    res = train_process("--resume", run, "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["train_loss"] for r in lines(run)] == [r["train_loss"] for r in lines(plain_run[0])]
    assert_bitwise_equal(weights(plain_run[0] / "final.pt"), weights(run / "final.pt"))


def test_corrupt_or_mismatched_checkpoint_exit_2(shards, plain_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(plain_run[0], run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    res = invoke("--resume", run)  # a finished run: nothing to do, nothing rewritten
    assert res.exit_code == 0 and "already finished" in res.output
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    res = invoke("--resume", run, "--lr", "0.3")
    assert res.exit_code == 2 and "options change the run" in res.stderr and "lr" in res.stderr
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace("epochs = 2", "epochs = 3"))  # config vs checkpoint
    res = invoke("--resume", run)
    assert res.exit_code == 2 and "mismatched configuration" in res.stderr, res.stderr
    (run / "ckpt" / "last.pt").write_bytes(b"not a checkpoint")
    res = invoke("--resume", run)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "corrupt" in res.stderr
    res = invoke(shards, "--out", run, *FAST)  # a second fresh run into the same RUN
    assert res.exit_code == 2 and "already holds a run" in res.stderr


def test_ddp_gloo_two_processes_and_exact_resume(shards, tmp_path):
    """2 ranks: identical weights, each sample once per epoch, and a run killed mid-epoch and
    resumed ends with the same weights and the same metrics (each rank keeps its own share of
    the epoch's running sums), with each rank's Q rows partly from its decoded cache."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]

    def torchrun(*args):
        return [*launcher, "-m", "ltpipe.train", *(str(a) for a in args)]

    run, killed = tmp_path / "ddp", tmp_path / "killed"
    opts = ["--epochs", "2", "--mixer", "cmo", "--mixer-opt", "mix_schedule=\"always\"",
            "--ckpt-every", "4", *PARTIAL_CACHE, *FAST]  # each rank: the same partial Q cache
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun(shards, "--out", run, "--dump-ranks", *opts), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(run / f"params-r{r}.pt", weights_only=True) for r in (0, 1))
    assert_bitwise_equal(a, b)  # DDP keeps the ranks identical
    n = json.loads((run / "final.json").read_text())["class_counts"]
    for epoch in (0, 1):
        seen = [np.load(run / f"seen-e{epoch}-r{r}.npy") for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == 45
        assert sorted(np.concatenate(seen).tolist()) == list(range(sum(n)))  # each sample once
    assert not (run / "params-r2.pt").exists() and len(lines(run)) == 2  # only rank 0 reports
    # 3 steps per epoch per rank: the checkpoint at step 4 is mid-epoch 1, the kill after step 5
    log = tmp_path / "killed.log"
    assert killed_run([shards, "--out", killed, *opts], 5, log, env, launcher) != 0
    assert torch.load(killed / "ckpt" / "last.pt", weights_only=True)["step_in_epoch"] == 1
    proc = subprocess.run(torchrun("--resume", killed), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bitwise_equal(weights(run / "final.pt"), weights(killed / "final.pt"))
    exact = ("train_loss", "q_cache_coverage")  # coverage: Q rows of both ranks
    assert [[r[k] for k in exact] for r in lines(run)] == \
        [[r[k] for k in exact] for r in lines(killed)]
    assert all(0.5 < r["q_cache_coverage"] < 1 for r in lines(run))
    shutil.rmtree(run / "tb")


def test_a_mixer_that_never_acts_is_warned_about(shards, tmp_path, caplog):
    res = invoke(shards, "--out", tmp_path / "r", "--epochs", "1", "--mixer", "cmo", *FAST)
    assert res.exit_code == 0, res.output
    assert "mixer cmo acts in none of the 1 epochs (mix_schedule='repo')" in caplog.text
    caplog.clear()
    res = invoke(shards, "--out", tmp_path / "r2", "--epochs", "1", "--mixer", "cmo",
                 "--mixer-opt", 'mix_schedule="always"', *FAST)
    assert res.exit_code == 0 and "acts in none" not in caplog.text


def test_m2m_classifier_is_stored_absolute(shards, plain_run, tmp_path, monkeypatch):
    """A resume from another directory (or a job scheduler's) still finds M2m's classifier."""
    monkeypatch.chdir(plain_run[0].parent)
    res = invoke(shards, "--out", tmp_path / "m2m", "--epochs", "1", "--mixer", "m2m",
                 "--m2m-classifier", plain_run[0].name, "--mixer-opt", "start_epoch=5", *FAST)
    assert res.exit_code == 0, res.output
    saved = (tmp_path / "m2m" / "config.toml").read_text()
    assert f'classifier = "{plain_run[0].resolve()}"' in saved


@pytest.mark.parametrize("argv, env, typed", [
    (["/x/bin/ltpipe", "train", "s", "--out", "r"], {}, "ltpipe train s --out r"),
    (["/repo/train/__main__.py", "s", "--out", "r"], {}, "python -m ltpipe.train s --out r"),
    (["/repo/train/__main__.py", "s", "--out", "r"], {"LOCAL_WORLD_SIZE": "8"},
     "torchrun --nproc_per_node=8 -m ltpipe.train s --out r")])
def test_config_records_the_command_as_typed(argv, env, typed):
    from ltpipe.train.train_cli import typed_command

    assert typed_command(argv, env) == typed


def test_torchrun_with_one_process_takes_the_ddp_path(shards, tmp_path):
    """`torchrun --nproc_per_node=1` starts a process group (so one GPU checks nccl and DDP) and
    trains exactly what a plain run with the same threads trains."""
    args = [str(shards), "--epochs", "1", "--mixer", "none", "--loss", "ce", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"plain": [sys.executable, "-m", "ltpipe.train"],
            "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node=1", "-m", "ltpipe.train"]}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, *args, "--out", str(tmp_path / name)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    used = {name: tomllib.loads((tmp_path / name / "config.toml").read_text())["run"]
            for name in runs}
    assert (used["torchrun"]["world"], used["torchrun"]["backend"]) == (1, "gloo")
    assert used["plain"]["backend"] == "none"
    assert_bitwise_equal(weights(tmp_path / "plain" / "final.pt"),
                         weights(tmp_path / "torchrun" / "final.pt"))
