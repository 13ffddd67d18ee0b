"""`ltpipe train` meets hostile and careless input: crafted checkpoints never run code, damaged
run directories and data are one line and exit 2, a failed run can be rerun, outputs are locked,
and corrupt samples are refused unless --skip-corrupt, which records what it left out."""

import errno
import json
import os
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_train import FAST as TINY_FAST
from tiny_train import invoke, write_tiny

from ltpipe.train.checkpoint import FORMAT
from ltpipe.train.train_cli import train

FAST = [*TINY_FAST, "--lr", "0.05", "--mixer", "none", "--loss", "ce"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):  # 30 samples a shard: 3 train shards
    return write_tiny(tmp_path_factory.mktemp("shards") / "tiny", samples_per_shard=30)


def one_line_error(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert str(needle) in res.stderr, res.stderr


def failing_save(fail_at: int):
    """torch.save that fills the disk on its ``fail_at``-th call (half a file, then ENOSPC)."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kw):
        calls.append(1)
        if len(calls) == fail_at:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kw)
    return save


@pytest.fixture(scope="module")
def half_run(shards, tmp_path_factory):
    """2 epochs whose second checkpoint hit a full disk: RUN/ckpt/last.pt is epoch 1's."""
    run = tmp_path_factory.mktemp("half") / "run"
    with mock.patch.object(torch, "save", failing_save(2)):
        res = CliRunner().invoke(train, [str(a) for a in (shards, "--out", run, "--epochs", "2",
                                                          *FAST)])
    assert load(run / "ckpt" / "last.pt")["epoch"] == 1
    return run, res


def load(path):
    """A checkpoint these tests wrote themselves (trusted)."""
    return torch.load(path, weights_only=False)


def copy_run(src, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- checkpoints never run code
class MakesAFile:
    """Unpickling calls open(marker, "w"): what a crafted checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("which", ["last", "final"])
def test_a_crafted_checkpoint_is_refused_and_runs_no_code(shards, half_run, tmp_path, which):
    run = copy_run(half_run[0], tmp_path)
    marker = tmp_path / "pwned"
    ckpt = load(run / "ckpt" / "last.pt")
    ckpt["payload"] = MakesAFile(marker)
    if which == "last":  # --resume loads RUN/ckpt/last.pt
        torch.save(ckpt, run / "ckpt" / "last.pt")
        res = invoke("--resume", run)
        path = run / "ckpt" / "last.pt"
    else:  # --m2m-classifier loads RUN/final.pt
        torch.save(ckpt, run / "final.pt")
        res = invoke(shards, "--out", tmp_path / "m2m", "--epochs", "1", *FAST, "--mixer", "m2m",
                     "--m2m-classifier", run)
        path = run / "final.pt"
    one_line_error(res, path, "refused")
    assert not marker.exists()


def test_a_checkpoint_of_the_old_format_is_refused_with_one_line(half_run, tmp_path):
    """Format 1 kept numpy's RNG state as a pickled array: not loadable without unpickling."""
    run = copy_run(half_run[0], tmp_path)
    ckpt = load(run / "ckpt" / "last.pt")
    ckpt["format"] = 1
    for rng in ckpt["rng"]:
        rng["numpy"] = np.random.get_state()
    torch.save(ckpt, run / "ckpt" / "last.pt")
    one_line_error(invoke("--resume", run), run / "ckpt" / "last.pt")


# ---------------------------------------------------------------- damaged run directories
def test_a_checkpoint_missing_keys_is_one_line(half_run, tmp_path):
    run = copy_run(half_run[0], tmp_path)
    ckpt = load(run / "ckpt" / "last.pt")
    for key in ("config", "optimizer"):
        torch.save({k: v for k, v in ckpt.items() if k != key}, run / "ckpt" / "last.pt")
        one_line_error(invoke("--resume", run), run / "ckpt" / "last.pt", key)
    torch.save({"format": FORMAT}, run / "ckpt" / "last.pt")
    one_line_error(invoke("--resume", run), run / "ckpt" / "last.pt")


def _no_run_table(text):
    return text[:text.index("[run]")]


# (how config.toml is damaged, what the line says); each was a traceback (KeyError, TypeError,
# AttributeError) or, for the NUL, a line that did not name the file
DAMAGED_CONFIGS = [
    (_no_run_table, "[run]: missing"),
    (lambda t: re.sub(r'shards = ".*"', "shards = 5", t), "[run] shards: must be the shard"),
    (lambda t: re.sub(r'shards = "(.*)"', r'shards = "\1\\u0000"', t), "[run] shards: must be"),
    (lambda t: 'run = "x"\n' + _no_run_table(t), "[run]: expected a table, got 'x'"),
    (lambda t: "train = [1]\n" + t[t.index("[loader]"):], "[train]: expected a table, got [1]"),
    (lambda t: t.replace("[mixer.none]\n", "[mixer]\nnone = 5\n"), "[mixer.none]: expected a"),
    (lambda t: t.replace("\nepochs = 2\n", '\nepochs = "2"\n'), "[train] epochs: must be"),
]


@pytest.mark.parametrize("damage,needle", DAMAGED_CONFIGS, ids=[n for _, n in DAMAGED_CONFIGS])
def test_a_damaged_or_foreign_config_toml_is_one_line_naming_the_field(half_run, tmp_path,
                                                                       damage, needle):
    run = copy_run(half_run[0], tmp_path)
    config = run / "config.toml"
    config.write_text(damage(config.read_text()))
    one_line_error(invoke("--resume", run), config, needle)


@pytest.mark.parametrize("text,needle", [
    ("train = 5", "[train]: expected a table, got 5"),
    ("[mixer]\ncmo = 5", "[mixer.cmo]: expected a table, got 5"),
    ("[aux]\nsmc = 1", "[aux.smc]: expected a table, got 1"),
    ("[loss]\nce = [1]", "[loss.ce]: expected a table, got [1]"),  # was "unknown parameter 1"
])
def test_a_recipe_value_where_a_table_goes_is_one_line(shards, tmp_path, text, needle):
    recipe = tmp_path / "r1.toml"
    recipe.write_text(text + "\n")
    res = invoke(shards, "--out", tmp_path / "r", "--recipe", recipe, "--epochs", "1", *FAST)
    one_line_error(res, f"{recipe}: {needle}")
    assert not (tmp_path / "r").exists()


def test_an_out_that_is_not_empty_and_not_a_run_is_refused(shards, tmp_path):
    """A user's folder (or another shard directory): its files were overwritten by the run's
    metrics.jsonl, final.json, ckpt/ and tb/."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own metrics\n")
    one_line_error(invoke(shards, "--out", out, "--epochs", "1", *FAST), out, "not a run")
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == "my own metrics\n"
    (out / "config.toml").write_text('name = "my project"\n')  # not a run's: not started over
    one_line_error(invoke(shards, "--out", out, "--epochs", "1", *FAST), out / "config.toml")
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "metrics.jsonl"]
    other = write_tiny(tmp_path / "other", seed=1)
    before = sorted(p.name for p in other.iterdir())
    one_line_error(invoke(shards, "--out", other, "--epochs", "1", *FAST), other, "not a run")
    assert sorted(p.name for p in other.iterdir()) == before


def test_ckpt_that_is_a_plain_file_is_one_line(half_run, tmp_path):
    run = copy_run(half_run[0], tmp_path)
    shutil.rmtree(run / "ckpt")
    (run / "ckpt").write_text("not a folder")
    one_line_error(invoke("--resume", run), run / "ckpt", "not a directory")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoint(half_run):
    run, res = half_run  # the second save raised ENOSPC
    one_line_error(res, run / "ckpt" / "last.pt", "No space left")
    assert not list((run / "ckpt").glob(".last.pt.tmp*"))  # the half-written file is gone
    assert load(run / "ckpt" / "last.pt")["epoch"] == 1
    assert not (run / ".ltpipe.lock").exists()


def test_a_torn_metrics_line_is_dropped_with_a_warning_on_resume(half_run, tmp_path, caplog):
    run = copy_run(half_run[0], tmp_path)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text().splitlines()
    assert len(whole) == 2  # epoch 1's line was written before its checkpoint failed
    metrics.write_text(whole[0] + "\n" + whole[1][:25])  # killed while writing epoch 1's line
    res = invoke("--resume", run)
    assert res.exit_code == 0, res.output
    assert "metrics.jsonl" in caplog.text and "torn" in caplog.text
    assert [json.loads(ln)["epoch"] for ln in metrics.read_text().splitlines()] == [0, 1]
    assert json.loads((run / "final.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------- options and data, checked first
@pytest.mark.parametrize("args,needle", [
    (["--mixer", "cutmix", "--mixer-opt", "alpha=inf"], "alpha"),
    (["--mixer", "cmo", "--mixer-opt", "prob=nan"], "prob"),
    (["--loss", "la", "--loss-opt", "tau=inf"], "tau"),
    (["--loss", "focal", "--loss-opt", "gamma=-inf"], "gamma"),
    (["--mixer", "cmo", "--fg-r", "inf"], "fg_r"),
    (["--lr", "nan"], "--lr"),
    (["--momentum", "inf"], "--momentum"),
])
def test_non_finite_options_are_refused_before_anything_is_written(shards, tmp_path, args,
                                                                   needle):
    res = invoke(shards, "--out", tmp_path / "r", "--epochs", "1", *FAST, *args)
    one_line_error(res, needle)
    assert not (tmp_path / "r").exists()  # the corrected command can reuse --out


def test_a_recipes_non_finite_aux_weight_is_refused(shards, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[train]\nmixer = "smc"\n[aux.smc]\nweight = inf\n')
    res = invoke(shards, "--out", tmp_path / "r", "--recipe", recipe, "--epochs", "1",
                 "--batch-size", "16")
    one_line_error(res, recipe, "weight")
    assert not (tmp_path / "r").exists()


def test_a_run_that_failed_before_its_first_checkpoint_reruns(shards, tmp_path):
    """The first checkpoint hits a full disk: config.toml exists, no checkpoint. Both the same
    command and --resume then start the run over."""
    cmd = (shards, "--out", tmp_path / "r", "--epochs", "1", *FAST)
    for again in (cmd, ("--resume", tmp_path / "r")):
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        with mock.patch.object(torch, "save", failing_save(1)):
            one_line_error(invoke(*cmd), "No space left")
        assert (tmp_path / "r" / "config.toml").is_file()
        assert not (tmp_path / "r" / "ckpt" / "last.pt").exists()
        res = invoke(*again)
        assert res.exit_code == 0, res.output
        assert (tmp_path / "r" / "final.json").is_file()
        assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_shards_without_a_val_split_fail_at_start(shards, tmp_path):
    noval = tmp_path / "noval"
    shutil.copytree(shards, noval)
    shutil.rmtree(noval / "val")
    doc = json.loads((noval / "manifest.json").read_text())
    del doc["splits"]["val"]
    (noval / "manifest.json").write_text(json.dumps(doc))
    res = invoke(noval, "--out", tmp_path / "r", "--epochs", "1", *FAST)
    one_line_error(res, noval, "val")
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written


def test_resume_refuses_other_or_changed_shards(shards, half_run, tmp_path):
    run = copy_run(half_run[0], tmp_path)
    other = tmp_path / "other"
    write_tiny(other, samples_per_shard=30, seed=1)
    one_line_error(invoke(other, "--resume", run), "manifest")
    gone = tmp_path / "gone"  # shards moved or deleted since the run started
    one_line_error(invoke(gone, "--resume", run), gone / "manifest.json")
    mine = tmp_path / "mine"  # the run's own shards, one of them since changed
    shutil.copytree(shards, mine, copy_function=shutil.copy2)  # keeps the mtimes
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace(str(shards.resolve()), str(mine.resolve())))
    tar = mine / "train" / "shard-000001.tar"
    before, data = tar.stat(), tar.read_bytes()
    at = data.index(b'"path": "') + len(b'"path": "')  # a byte no check but the digest reads
    tar.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    one_line_error(invoke("--resume", run), tar, "SHA-256")
    with open(tar, "r+b") as fh:  # damaged: cut short
        fh.truncate(tar.stat().st_size // 2)
    one_line_error(invoke("--resume", run), tar)
    tar.write_bytes(data)  # the same bytes, a new mtime (a copy without -p): the same data
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert invoke("--resume", run).exit_code == 0


# ---------------------------------------------------------------- locked outputs
def test_a_second_run_into_a_locked_out_exits_2(shards, half_run, tmp_path):
    from ltpipe.shards.outlock import output_lock

    out = tmp_path / "r"
    out.mkdir()
    with output_lock(out, "ltpipe train (another run)"):  # a live process on this host holds it
        one_line_error(invoke(shards, "--out", out, "--epochs", "1", *FAST), "locked")
        assert not (out / "config.toml").exists()
    run = copy_run(half_run[0], tmp_path, "resumed")
    before = (run / "metrics.jsonl").read_text()
    with output_lock(run, "ltpipe train (another run)"):
        one_line_error(invoke("--resume", run), "locked")
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched


# ---------------------------------------------------------------- corrupt samples
def test_a_truncated_train_shard_is_refused_unless_skip_corrupt(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    tar = bad / "train" / "shard-000001.tar"
    with open(tar, "r+b") as fh:
        fh.truncate(tar.stat().st_size // 2)
    res = invoke(bad, "--out", tmp_path / "r", "--epochs", "1", *FAST)
    one_line_error(res, "shard-000001.tar", "--skip-corrupt")
    assert not (tmp_path / "r").exists()
    res = invoke(bad, "--out", tmp_path / "r", "--epochs", "1", "--skip-corrupt", *FAST)
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    assert final["skipped_train"] > 0 and final["skipped_val"] == 0
    (line,) = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert (line["skipped_train"], line["skipped_val"]) == (final["skipped_train"], 0)
    assert f"skipped {final['skipped_train']} corrupt train" in res.output


def test_a_sigterm_during_a_checkpoint_write_waits_until_the_file_is_whole(tmp_path, monkeypatch):
    """A scheduler's SIGTERM that comes while torch.save writes last.pt: the file is finished and
    renamed first, no temporary is left, and then the trainer's handler runs (it used to run
    inside torch's zip writer, which reported a RuntimeError instead: a traceback, exit 1)."""
    import signal

    from ltpipe.train import checkpoint

    class Stop(Exception):
        pass

    def trainers_handler(signum, frame):
        raise Stop()

    real_save = torch.save

    def save_hit_by_sigterm(obj, fh):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler would run here, mid-write
        real_save(obj, fh)

    monkeypatch.setattr(checkpoint.torch, "save", save_hit_by_sigterm)
    before = signal.signal(signal.SIGTERM, trainers_handler)
    try:
        with pytest.raises(Stop):
            checkpoint.save_atomic({"step": torch.tensor(7)}, tmp_path / "last.pt")
        assert signal.getsignal(signal.SIGTERM) is trainers_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"].item() == 7
