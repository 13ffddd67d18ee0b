"""End to end on the CPU: every method × {ce, bs, ldam} trains through the real
trainer (and, for a subset, the DALI CPU loader) on tiny synthetic shards; OTmix's confusion
refresh reads only its split."""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ltpipe.shards.cli import shard
from ltpipe.train.train_cli import resolve_run, run

VAL_COUNTS = [6, 6, 6, 6]
TRAIN_COUNTS = [24, 12, 6, 3]
OPTIONS = dict(reweight=None, model="resnet8", epochs=1, batch_size=8, lr=None, wd=None,
               momentum=None, warmup=0, schedule=None, milestones=None, gamma=None,
               drw_epoch=None, device="cpu", seed=None, precision=None, channels_last=None,
               compile=None, eval_every=None, ckpt_every=None, preset=None, image_size=16,
               fg_r=None, otmix_mode=None, otmix_confusion_split=None, m2m_classifier=None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "shards"
    res = CliRunner().invoke(shard, ["synthetic", str(out), "--classes", "4", "--max-per-class",
                                     "24", "--image-size", "16", "--imbalance", "8"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["splits"]["train"]["class_counts"] == TRAIN_COUNTS
    assert doc["splits"]["val"]["class_counts"] == VAL_COUNTS
    return out


def train(shards, out, mixer, loss, mixer_opts=(), **overrides) -> dict:
    opts = {**OPTIONS, "mixer": mixer, "loss": loss, **overrides}
    cfg, shard_dir, run_dir = resolve_run(shards, out, "synthetic", None, tuple(mixer_opts), (),
                                          opts)
    return run(cfg, shard_dir, run_dir, resume=False, progress=False)


@pytest.fixture(scope="module")
def g_run(shards, tmp_path_factory) -> Path:
    """M2m's frozen classifier: an earlier plain ERM run."""
    out = tmp_path_factory.mktemp("g") / "run"
    train(shards, out, "none", "ce")
    return out


MIXER_OPTS = {
    "resizemix": (),
    "remix": (),
    "smc": (),
    "otmix": ('mix_schedule="always"', "prob=1.0"),
    "m2m": ("start_epoch=0", "T=2"),
}
E2E = [("resizemix", "ce"), ("remix", "bs"), ("smc", "ldam"), ("smc", "bs"), ("m2m", "ldam")]


@pytest.mark.parametrize("mixer,loss", E2E)
def test_method_trains_one_epoch_from_the_cli_entry(shards, g_run, tmp_path, mixer, loss):
    """The real loader (DALI CPU), trainer and reports; OTmix runs below with 2 epochs."""
    extra = {"m2m_classifier": g_run} if mixer == "m2m" else {}
    result = train(shards, tmp_path / "run", mixer, loss, MIXER_OPTS[mixer], **extra)
    assert 0.0 <= result["top1"] <= 100.0
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(line["train_loss"])
    if mixer == "smc":  # the aux term ran and was weighted by η = 0.1
        assert line["train_loss"] == pytest.approx(line["loss_base"] + 0.1 * line["loss_smc"],
                                                   rel=1e-4)


def _streams(seed, b=8, h=16):
    from ltpipe.pipeline.batch import Batch

    g = torch.Generator().manual_seed(seed)

    def one(labels):
        return Batch(torch.randn(b, 3, h, h, generator=g), labels,
                     torch.randperm(sum(TRAIN_COUNTS), generator=g)[:b])

    return {"uniform": one(torch.randint(0, 4, (b,), generator=g)),
            "minority": one(torch.arange(b) % 4), "balanced": one(torch.arange(b) % 4)}


@pytest.mark.parametrize("loss", ["ce", "bs", "ldam"])
@pytest.mark.parametrize("mixer", list(MIXER_OPTS))
def test_every_method_times_every_loss_trains(shards, g_run, mixer, loss):
    """The trainer's own builders and train_step (no loader: fast) for the whole cross product:
    two optimizer steps, finite loss, parameters move."""
    from ltpipe.train import build
    from ltpipe.train.config import load_recipe, parse_assignments, resolve
    from ltpipe.train.dist import DistInfo
    from ltpipe.train.loop import make_autocast, train_step
    from ltpipe.train.mixers.base import StepContext
    from ltpipe.train.step_keys import step_generator

    opts = MIXER_OPTS[mixer] + (("mu=0.0",) if mixer == "otmix" else ())  # μ=0: OT every epoch
    params = parse_assignments(opts, "--mixer-opt")
    if mixer == "m2m":
        params["classifier"] = str(g_run)
    train_opts = {"mixer": mixer, "loss": loss, "model": "resnet8", "epochs": 2,
                  "batch_size": 8, "image_size": 16, "channels_last": False}
    cfg = resolve(load_recipe("synthetic"), train_opts, params)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    env = build.make_env(cfg["train"], torch.tensor(TRAIN_COUNTS), shards, info)
    mixer_mod = build.make_mixer(cfg, env)
    model, criterion = build.make_model_and_criterion(cfg, env, mixer_mod)
    opt, sched = build.make_optimizer(cfg["train"], model, criterion, steps_per_epoch=2)
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model.train()
    for step in range(2):
        ctx = StepContext(1, 2, step, env.class_counts,
                          step_generator(0, 1, step, 0, torch.device("cpu")), model=model)
        if step == 0:
            mixer_mod.on_epoch_start(1, ctx)
        streams = {k: v for k, v in _streams(step).items() if k in mixer_mod.streams}
        loss_value, parts, n, changed = train_step(
            model=model, mixer=mixer_mod, criterion=criterion, optimizer=opt, scheduler=sched,
            scaler=scaler, streams=streams, ctx=ctx,
            autocast=make_autocast(torch.device("cpu"), "fp32"))
        assert math.isfinite(loss_value.item()) and n >= 8 and 0 <= int(changed) <= n
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if mixer == "otmix":  # epoch 1 with the val split's confusion: the steps are OT steps
        assert bool(mixer_mod.has_fhat)
        assert mixer_mod(_streams(9), ctx).extras["ot"] is True


@pytest.mark.parametrize("mode", ["exact", "bank"])
def test_otmix_refreshes_confusion_and_checkpoints_it(shards, tmp_path, mode):
    # μ = 0: (t/T)^0 = 1, so epoch 1 takes OT steps with F̂ from the end of epoch 0
    opts = ('mix_schedule="always"', "prob=1.0", "mu=0.0", f'mode="{mode}"')
    train(shards, tmp_path / "run", "otmix", "ce", opts, epochs=2)
    ckpt = torch.load(tmp_path / "run" / "ckpt" / "last.pt", map_location="cpu",
                      weights_only=True)
    mixer = ckpt["mixer"]  # the mixer's buffers are checkpointed (F̂ survives a resume)
    assert bool(mixer["has_fhat"])
    fhat = mixer["fhat"]
    assert torch.all(fhat.diagonal() == 0) and torch.all(fhat.sum(1) <= 1 + 1e-6)
    assert fhat.sum() > 0  # filled from the epoch's confusions (that OT steps follow from it
    # is the previous test's check, on the mixer itself)


def _otmix(shards, split):
    from ltpipe.train.mixers.base import MixerEnv
    from ltpipe.train.mixers.otmix import OTMix

    env = MixerEnv(class_counts=torch.tensor(TRAIN_COUNTS), device=torch.device("cpu"),
                   image_size=16, batch_size=8, epochs=4, shards=str(shards))
    return OTMix(env, confusion_split=split)


def test_confusion_refresh_reads_only_the_chosen_split(shards, tmp_path):
    import shutil

    from ltpipe.train.models import build_model

    model = build_model("resnet8", 4)
    m = _otmix(shards, "val")
    m.refresh_confusion(model, epoch=1)
    assert m.last_counts.sum(1).tolist() == VAL_COUNTS  # every val sample once, no train sample
    assert bool(m.has_fhat) and torch.all(m.fhat.diagonal() == 0)
    assert model.training  # switched back after the eval pass
    # shards without the split: min(n_k, 20) train samples per class (METHODS.md: OTmix)
    train_only = tmp_path / "train-only"
    shutil.copytree(shards, train_only, ignore=shutil.ignore_patterns("val"))
    doc = json.loads((train_only / "manifest.json").read_text())
    del doc["splits"]["val"]
    (train_only / "manifest.json").write_text(json.dumps(doc))
    m = _otmix(train_only, "val")
    m.refresh_confusion(model, epoch=1)
    assert m.last_counts.sum(1).tolist() == [min(n, 20) for n in TRAIN_COUNTS]


def test_train_step_fills_the_otmix_bank_from_its_own_forward(shards):
    """Bank mode costs no extra forward: train_step hands the features of unmixed rows to the
    mixer (Mixer.observe), so after a plain step every background id has a feature."""
    from ltpipe.train import build
    from ltpipe.train.config import load_recipe, resolve
    from ltpipe.train.dist import DistInfo
    from ltpipe.train.loop import make_autocast, train_step
    from ltpipe.train.mixers.base import StepContext
    from ltpipe.train.step_keys import step_generator

    cfg = resolve(load_recipe("synthetic"), {"mixer": "otmix", "loss": "ce", "model": "resnet8",
                                             "epochs": 2, "batch_size": 8, "image_size": 16,
                                             "channels_last": False},
                  {"mode": "bank", "prob": 0.0})  # p = 0: plain steps only
    env = build.make_env(cfg["train"], torch.tensor(TRAIN_COUNTS), shards,
                         DistInfo(0, 1, 0, torch.device("cpu")))
    mixer = build.make_mixer(cfg, env)
    model, criterion = build.make_model_and_criterion(cfg, env, mixer)
    opt, sched = build.make_optimizer(cfg["train"], model, criterion, steps_per_epoch=1)
    streams = _streams(3)
    ctx = StepContext(0, 2, 0, env.class_counts, step_generator(0, 0, 0, 0, torch.device("cpu")),
                      model=model)
    train_step(model=model, mixer=mixer, criterion=criterion, optimizer=opt, scheduler=sched,
               scaler=torch.amp.GradScaler("cpu", enabled=False), streams=streams, ctx=ctx,
               autocast=make_autocast(torch.device("cpu"), "fp32"))
    seen = torch.nonzero(mixer.bank_seen).flatten()
    assert sorted(seen.tolist()) == sorted(streams["uniform"].index.tolist())
    assert bool((mixer.bank[seen].abs().sum(1) > 0).all())
