"""The library and its environment misused: mixers given malformed streams, losses given labels
of the wrong kind, ``evaluate`` a loader of other shards, ``MixerEnv`` and the loaders a wrong
argument, ``ltpipe train`` a malformed torchrun environment, ``ltpipe inspect --plot`` a path it
must not write, ``ltpipe bench e2e`` a damaged shard directory. Each is one ValueError/TypeError
naming the argument, or one line and exit 2; never a traceback from deep inside torch."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ltpipe.pipeline import make_torch_loader
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.shards.cli import inspect
from ltpipe.train.evaluate import evaluate
from ltpipe.train.losses import build_base_loss, mixed_loss
from ltpipe.train.mixers import MixerEnv, build_mixer
from ltpipe.train.models import build_model

B, H, C = 8, 16, 4
COUNTS = torch.tensor([100, 40, 10, 3])


def env(**kw):
    return MixerEnv(COUNTS, torch.device("cpu"), H, B, epochs=10, **kw)


def batch(n=B, images=None, labels=None):
    images = torch.rand(n, 3, H, H) if images is None else images
    labels = torch.arange(n) % C if labels is None else labels
    return Batch(images, labels, torch.arange(len(labels)))


# ---------------------------------------------------------------- mixers
BAD_STREAMS = {
    "no Q": (lambda: {"uniform": batch()}, r"stream 'minority' must be a Batch, got missing"),
    "a tensor": (lambda: {"uniform": torch.rand(B, 3, H, H), "minority": batch()},
                 r"stream 'uniform' must be a Batch, got a Tensor"),
    "rank 3": (lambda: {"uniform": batch(images=torch.rand(3, H, H)), "minority": batch()},
               r"streams\['uniform'\]\.images must be a float tensor \[B, 3, H, W\]"),
    "uint8": (lambda: {"uniform": batch(images=torch.zeros(B, 3, H, H, dtype=torch.uint8)),
                       "minority": batch()}, r"\.images must be a float tensor"),
    "float labels": (lambda: {"uniform": batch(labels=torch.zeros(B)), "minority": batch()},
                     r"\.labels must be an int64 tensor \[B\], got torch.float32"),
    "5 labels": (lambda: {"uniform": Batch(torch.rand(B, 3, H, H), torch.zeros(5, dtype=torch.long),
                                           torch.arange(B)), "minority": batch()},
                 r"8 images and 5 labels"),
    "label 7": (lambda: {"uniform": batch(labels=torch.full((B,), 7)), "minority": batch()},
                r"\.labels must be in \[0, 4\) \(the env's classes\), got 7\.\.7"),
    "label -1": (lambda: {"uniform": batch(), "minority": batch(labels=torch.full((B,), -1))},
                 r"streams\['minority'\]\.labels must be in \[0, 4\)"),
    "B differs": (lambda: {"uniform": batch(), "minority": batch(6)},
                  r"batch sizes \{'uniform': 8, 'minority': 6\}: 'minority' has fewer rows"),
    "empty": (lambda: {"uniform": batch(0), "minority": batch(0)}, r"at least one"),
}


@pytest.mark.parametrize("name", ["cmo", "smc", "otmix", "cutmix", "mixup", "remix"])
@pytest.mark.parametrize("case", BAD_STREAMS)
def test_a_mixer_refuses_malformed_streams_in_one_line(name, case):
    make, message = BAD_STREAMS[case]
    mixer = build_mixer(name, env=env())
    if case in ("no Q", "label -1", "B differs") and "minority" not in mixer.streams:
        pytest.skip("a case of Q; this mixer reads P only")
    with pytest.raises(ValueError, match=rf"^mixer \w+: .*{message}") as exc:
        mixer.mix(make(), 5, 0)
    assert "\n" not in str(exc.value)


def test_a_mixer_refuses_streams_on_another_device_type():
    meta = {"uniform": Batch(torch.rand(B, 3, H, H, device="meta"), torch.arange(B) % C,
                             torch.arange(B)), "minority": batch()}
    with pytest.raises(ValueError, match=r"streams\['uniform'\]: on meta, but the mixer's env "
                                         r"is on cpu"):
        build_mixer("cmo", env=env()).mix(meta, 5, 0)


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", ["ce", "ldam", "bs", "la", "focal"])
@pytest.mark.parametrize("y, message", [
    (torch.zeros(B), r"labels must be an int64 tensor \[8\] .*got torch.float32 \(8,\)"),
    (torch.zeros(B, dtype=torch.int32), r"labels must be an int64 tensor \[8\]"),
    (torch.zeros(B, 1, dtype=torch.long), r"got torch.int64 \(8, 1\)"),
    (torch.zeros(5, dtype=torch.long), r"got torch.int64 \(5,\)"),
    (torch.eye(C)[torch.zeros(B, dtype=torch.long)], r"got torch.float32 \(8, 4\)"),
    (torch.full((B,), 7), r"labels must be in \[0, 4\) \(the classes of class_counts\), got 7"),
    (torch.full((B,), -1), r"labels must be in \[0, 4\)"),
], ids=["float", "int32", "2d", "short", "one-hot", "above", "negative"])
def test_a_loss_refuses_labels_of_the_wrong_kind(loss, y, message):
    with pytest.raises(ValueError, match=rf"^loss '\w+': .*{message}"):
        build_base_loss(loss, COUNTS)(torch.randn(B, C), y)


def test_mixed_loss_refuses_a_lam_of_another_length():
    y = torch.zeros(B, dtype=torch.long)
    mixed = MixedBatch(torch.rand(B, 3, H, H), y, y + 1, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"mixed_loss: .* got logits \(8, 4\) and lam \(3,\)"):
        mixed_loss(F.cross_entropy, torch.randn(B, C), mixed)


# ---------------------------------------------------------------- evaluate, env, loaders
def test_evaluate_refuses_a_loader_or_model_of_another_class_count(tiny_shards):
    val = make_torch_loader(tiny_shards, split="val", batch_size=16)  # 6 classes
    with pytest.raises(ValueError, match=r"evaluate: the loader's split has 6 classes, but "
                                         r"train_counts has 4"):
        evaluate(build_model("resnet8", 6), val, COUNTS)
    counts = torch.tensor(val.class_counts)
    with pytest.raises(ValueError, match=r"evaluate: logits of shape \(16, 4\), but "
                                         r"class_counts has 6 classes"):
        evaluate(build_model("resnet8", 4), val, counts)


def test_env_refuses_a_rank_outside_the_world_a_bad_device_and_a_non_path(tiny_shards):
    with pytest.raises(ValueError, match=r"MixerEnv: need 0 <= rank < world, got rank=1 world=1"):
        env(rank=1)
    with pytest.raises(ValueError, match=r"MixerEnv: need 0 <= rank < world, got rank=2 world=2"):
        MixerEnv.from_shards(tiny_shards, epochs=1, batch_size=8, rank=2, world=2)
    with pytest.raises(ValueError, match=r"MixerEnv.from_shards: device 'gpu9'"):
        MixerEnv.from_shards(tiny_shards, epochs=1, batch_size=8, device="gpu9")
    for shards in (None, 5, os.fsencode(tiny_shards)):
        with pytest.raises(TypeError, match=r"^shards: must be a shard directory's path \(a str "
                                            r"or Path\), got \w+$"):
            MixerEnv.from_shards(shards, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"^shards: no shard directory given$"):
        MixerEnv.from_shards("", epochs=1, batch_size=8)


def test_a_loader_takes_one_stream_name_as_a_name_not_its_letters(tiny_shards):
    loader = make_torch_loader(tiny_shards, batch_size=8, streams="uniform")
    assert loader.streams == ("uniform",)
    with pytest.raises(TypeError, match=r"^shards: must be a shard directory's path"):
        make_torch_loader(5, batch_size=8)


def test_a_malformed_local_world_size_names_the_variable(tiny_shards, monkeypatch):
    from ltpipe.pipeline.loader_args import cpus_per_rank

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"^environment: LOCAL_WORLD_SIZE='two' is not an "
                                         r"integer >= 1$"):
        cpus_per_rank()


# ---------------------------------------------------------------- torchrun's variables
@pytest.mark.parametrize("variables, message", [
    ({"RANK": "abc"}, "RANK='abc' is not an integer >= 0"),
    ({"RANK": "-1"}, "RANK='-1' is not an integer >= 0"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not an integer >= 1"),
    ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK=3 is not below WORLD_SIZE=2"),
    ({"RANK": "1"}, "RANK=1 is not below WORLD_SIZE=1"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' is not an integer >= 0"),
    ({"LOCAL_WORLD_SIZE": "abc"}, "LOCAL_WORLD_SIZE='abc' is not an integer >= 1"),
    ({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK=3 is not below LOCAL_WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h"}, "WORLD_SIZE=2 needs MASTER_PORT"),
], ids=lambda v: " ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "")
def test_a_malformed_torchrun_environment_is_one_line(variables, message, monkeypatch):
    from ltpipe.train.dist import init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"^environment: {message}"):
        init_distributed("cpu")


def test_ltpipe_train_says_which_variable_is_wrong_and_makes_no_run(tiny_shards, tmp_path):
    env_ = {**os.environ, "RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
            "MASTER_PORT": "29511"}
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "ltpipe.train", str(tiny_shards), "--out",
                          str(run), "--recipe", "synthetic", "--epochs", "1"],
                         capture_output=True, text=True, timeout=120, env=env_)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "ltpipe train: error: environment: RANK=2 is not below WORLD_SIZE=2"], res.stderr
    assert not run.exists()


# ---------------------------------------------------------------- inspect --plot
def test_inspect_plot_replaces_only_a_png_outside_the_shards(tiny_shards, tmp_path):
    def plot(path):
        return CliRunner().invoke(inspect, [str(tiny_shards), "--plot", str(path)])

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path, message in [
            (notes, "exists and is not a PNG; ltpipe inspect overwrites only a PNG"),
            (tiny_shards / "counts.png", f"is inside the shard directory {tiny_shards}"),
            (tmp_path / "no" / "counts.png", f"no such directory {tmp_path / 'no'}")]:
        res = plot(path)
        assert res.exit_code == 2, res.output
        assert f"--plot {path}: {message}" in res.output, res.output
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in tiny_shards.iterdir()) == ["manifest.json", "train", "val"]
    out = tmp_path / "counts.svg"  # any name: the file is a PNG, and replaces an earlier one
    for _ in range(2):
        assert plot(out).exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.svg", "notes.txt"]


# ---------------------------------------------------------------- bench
def test_bench_e2e_on_a_damaged_shard_directory_is_one_line(tiny_shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_shards, broken)
    next((broken / "train").glob("*.tar")).unlink()
    res = subprocess.run(["ltpipe", "bench", "e2e", str(broken), "--device", "cpu", "--tiny",
                          "--out", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert any(line.startswith("ltpipe bench e2e: error: ") and "missing (listed in" in line
               for line in res.stderr.splitlines()), res.stderr


def test_a_loader_names_a_split_mixer_or_stream_of_the_wrong_type(tiny_shards):
    for kwargs, error, message in [
            (dict(split=5), ValueError, r"^split: must be a string, got 5$"),
            (dict(mixer=object()), TypeError, r"^mixer: must be a mixer .*got object$"),
            (dict(streams=[["uniform"]]), ValueError, r"^streams: unknown \[\['uniform'\]\]")]:
        with pytest.raises(error, match=message):
            make_torch_loader(tiny_shards, batch_size=8, **kwargs)
