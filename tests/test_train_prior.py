"""The prior of the logit-adjusted losses: the data's π (prior="data") or the expected class
distribution of the mixed labels that SMC, CMO and OTmix declare (prior="mixed"),
train/METHODS.md, SMC and Losses."""

import math

import numpy as np
import pytest
import torch

from ltpipe.kernels.boxes import cutmix_boxes, resizemix_boxes, sample_lam
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.train.config import load_recipe
from ltpipe.train.losses.base import ModelOutput
from ltpipe.train.losses.criterion import Criterion
from ltpipe.train.losses.per_sample import build_base_loss
from ltpipe.train.losses.prior import cutmix_fg_share, mixed_label_prior, resizemix_fg_share
from ltpipe.train.losses.weights import ClassWeights
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.cmo import CMO
from ltpipe.train.mixers.otmix import OTMix
from ltpipe.train.mixers.smc import SMCMix

COUNTS = torch.tensor([400, 100, 20, 4])
PI = COUNTS.double() / COUNTS.sum()
LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.1], [0.3, -0.2, 1.5, 0.0], [-1.0, 0.0, 0.2, 0.9]])
Y_A, Y_B = torch.tensor([0, 2, 3]), torch.tensor([1, 1, 0])
LAM = torch.tensor([0.25, 1.0, 0.6])


def ctx(seed=0):
    return StepContext(epoch=0, epochs=10, step=0, class_counts=COUNTS,
                       generator=torch.Generator().manual_seed(seed))


def ce(z, y):
    z = z.double()
    return torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]


def mixed_ce(shift):
    """lam·CE(z + shift, y_a) + (1 − lam)·CE(z + shift, y_b), mean over the batch, float64."""
    z = LOGITS.double() + shift
    lam = LAM.double()
    return float((lam * ce(z, Y_A) + (1 - lam) * ce(z, Y_B)).mean())


def criterion(name="la", **params):
    base = build_base_loss(name, COUNTS, **params)
    return Criterion(base, ClassWeights("none", COUNTS, epochs=10))


def test_mixed_prior_by_hand():
    # π = (3/4, 1/4); q(r=1) ∝ 1/n = (1/4, 3/4): mixing every sample with half the label on the
    # foreground makes the labels balanced; mixing half the samples goes halfway.
    pi, q = [0.75, 0.25], class_probabilities([6, 2], 1.0)
    assert np.allclose(q, [0.25, 0.75])
    assert np.allclose(mixed_label_prior(pi, q, fg_share=0.5, prob=1.0), [0.5, 0.5])
    assert np.allclose(mixed_label_prior(pi, q, fg_share=0.5, prob=0.5), [0.625, 0.375])
    assert np.allclose(mixed_label_prior(pi, q, fg_share=0.3, prob=0.0), pi)  # nothing mixed
    with pytest.raises(ValueError, match="fg_share"):
        mixed_label_prior(pi, q, fg_share=1.5)


def test_resizemix_fg_share_is_exact():
    # H = W = 2, s ~ U(0.2, 0.8): h = round(2√s) is 1 below s = 0.5625 and 2 above, so
    # E[lf] = (0.3625·¼ + 0.2375·1) / 0.6
    assert resizemix_fg_share(2, 2, (0.2, 0.8)) == pytest.approx((0.3625 / 4 + 0.2375) / 0.6)
    assert resizemix_fg_share(2, 2, (0.6, 0.6)) == 1.0  # a point mass: round(2·√0.6) = 2
    # against the kernel's own boxes, drawn per sample
    g = torch.Generator().manual_seed(0)
    for h, w in ((32, 32), (16, 24)):
        _, lam = resizemix_boxes(200_000, h, w, g, scale=(0.2, 0.8))
        assert resizemix_fg_share(h, w, (0.2, 0.8)) == pytest.approx(float(1 - lam.double().mean()),
                                                                     abs=2e-3)


@pytest.mark.parametrize("name", ["la", "bs"])
def test_prior_data_is_the_data_prior(name):
    explicit = criterion(name, prior="data")
    default = criterion(name)
    # a declared mixed prior on the batch is ignored: "data" corrects by π, as before
    batch = MixedBatch(LOGITS, Y_A, Y_B, LAM, {"label_prior": torch.full((4,), 0.25)})
    for crit in (explicit, default):
        got = float(crit(ModelOutput(LOGITS), batch, ctx()).loss)
        assert math.isclose(got, mixed_ce(PI.log()), rel_tol=1e-6)


@pytest.mark.parametrize("name,tau", [("la", 1.0), ("la", 0.5), ("bs", 1.0)])
def test_prior_mixed_corrects_by_the_declared_prior(name, tau):
    params = {"prior": "mixed", **({"tau": tau} if name == "la" else {})}
    crit = criterion(name, **params)
    declared = torch.tensor([0.4, 0.3, 0.2, 0.1])
    batch = MixedBatch(LOGITS, Y_A, Y_B, LAM, {"label_prior": declared})
    got = float(crit(ModelOutput(LOGITS), batch, ctx()).loss)
    assert math.isclose(got, mixed_ce(tau * declared.double().log()), rel_tol=1e-6)
    assert not math.isclose(got, mixed_ce(tau * PI.log()), rel_tol=1e-3)


def test_prior_mixed_without_a_declaring_mixer_is_an_error():
    crit = criterion("la", prior="mixed")
    with pytest.raises(ValueError, match="prior='mixed' needs a mixer"):
        crit(ModelOutput(LOGITS), MixedBatch(LOGITS, Y_A, Y_B, LAM), ctx())
    with pytest.raises(ValueError, match="prior must be one of"):
        build_base_loss("la", COUNTS, prior="batch")


@pytest.mark.parametrize("fg_r", [0.0, 1.0])
def test_smc_declares_the_expected_label_distribution(fg_r):
    h = 16
    env = MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=h, batch_size=8,
                   epochs=10)
    mixer = SMCMix(env, fg_r=fg_r, view_aug="none", box="sample")
    g = torch.Generator().manual_seed(1)
    # P draws classes by π, Q by q(fg_r): the loader's two streams, simulated with many rows
    n = 4096
    q = class_probabilities(COUNTS.numpy(), fg_r)
    y_bg = torch.multinomial(PI, n, replacement=True, generator=g)
    y_fg = torch.multinomial(torch.from_numpy(q), n, replacement=True, generator=g)
    streams = {"uniform": Batch(torch.rand(n, 3, h, h), y_bg, torch.arange(n)),
               "minority": Batch(torch.rand(n, 3, h, h), y_fg, torch.arange(n))}
    out = mixer(streams, ctx(2))
    declared = out.extras["label_prior"].double()
    want = mixed_label_prior(PI.numpy(), q, resizemix_fg_share(h, h, (0.2, 0.8)), prob=1.0)
    assert torch.allclose(declared, torch.from_numpy(want), atol=1e-6)
    # and it is what the labels of the batch are, on average
    seen = torch.zeros(4, dtype=torch.float64)
    seen.index_add_(0, out.y_a, out.lam.double())
    seen.index_add_(0, out.y_b, 1 - out.lam.double())
    assert torch.allclose(seen / seen.sum(), declared, atol=0.02)
    assert declared[0] < PI[0] - 0.2  # much flatter than π


def test_smc_with_clean_batches_declares_a_prior_between_the_two():
    """With a share 1 − prob of clean batches the labels follow π + prob·E[lf]·(q − π)."""
    env = MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=16, batch_size=8,
                   epochs=10)
    q = class_probabilities(COUNTS.numpy(), 0.0)
    share = resizemix_fg_share(16, 16, (0.2, 0.8))
    got = SMCMix(env, fg_r=0.0, prob=0.5).label_prior(16, 16).numpy()
    assert np.allclose(got, mixed_label_prior(PI.numpy(), q, share, prob=0.5))
    every = SMCMix(env, fg_r=0.0).label_prior(16, 16).numpy()
    assert every[0] < got[0] < PI[0].item()


def test_smc_recipes_correct_by_the_mixed_prior():
    for name in ("synthetic-smc", "cifar100-lt-smc", "imagenet-lt-smc"):
        recipe = load_recipe(name)
        assert recipe["train"]["loss"] == "la" and recipe["loss"]["la"]["prior"] == "mixed"
        assert recipe["mixer"]["smc"]["prob"] == 0.5  # half the batches clean (METHODS.md, SMC)


def test_smc_recipe_trains_with_the_mixed_prior(tmp_path):
    """The real trainer and loader: the SMC mixer's declared prior reaches the loss."""
    import json
    import subprocess
    import sys

    from ltpipe.shards.write import write_shards

    shards = tmp_path / "tiny"
    write_shards("synthetic", shards, progress=False, classes=4, max_per_class=32, imbalance=8,
                 image_size=16, seed=0)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ltpipe.train", str(shards), "--out", str(run), "--recipe",
           "synthetic-smc", "--epochs", "1", "--batch-size", "16", "--warmup", "0",
           "--image-size", "16", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'prior = "mixed"' in (run / "config.toml").read_text()
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # the recipe mixes half the batches: the epoch's share is 0..1 (the gate: test_methods_mixers)
    assert 'prob = 0.5' in (run / "config.toml").read_text()
    assert math.isfinite(line["loss_base"]) and 0.0 <= line["mixed_share"] <= 1.0


@pytest.mark.parametrize("h,w,alpha", [(32, 32, 1.0), (16, 24, 1.0), (32, 32, 4.0), (7, 9, 0.5)])
def test_cutmix_fg_share_matches_the_kernels_boxes(h, w, alpha):
    """E[area]/HW of the clipped CutMix box: about 0.30 at 32 px for α = 1, not the 0.5 of an
    unclipped box. 400k kernel boxes have a standard error of ~5e-4 around their mean."""
    g = torch.Generator().manual_seed(3)
    _, lam = cutmix_boxes(sample_lam(400_000, alpha, g), h, w, g)
    assert cutmix_fg_share(h, w, alpha) == pytest.approx(float(1 - lam.double().mean()), abs=3e-3)
    with pytest.raises(ValueError, match="alpha"):
        cutmix_fg_share(h, w, 0.0)


def minority_streams(n, h, fg_r, seed=1):
    """P draws classes by π, Q by q(fg_r): the loader's two streams, simulated with many rows."""
    g = torch.Generator().manual_seed(seed)
    q = class_probabilities(COUNTS.numpy(), fg_r)
    y_bg = torch.multinomial(PI, n, replacement=True, generator=g)
    y_fg = torch.multinomial(torch.from_numpy(q), n, replacement=True, generator=g)
    return q, {"uniform": Batch(torch.rand(n, 3, h, h), y_bg, torch.arange(n)),
               "minority": Batch(torch.rand(n, 3, h, h), y_fg, torch.arange(n))}


def label_histogram(out):
    seen = torch.zeros(4, dtype=torch.float64)
    seen.index_add_(0, out.y_a, out.lam.double())
    seen.index_add_(0, out.y_b, 1 - out.lam.double())
    return seen / seen.sum()


@pytest.mark.parametrize("make,share", [
    (lambda env: CMO(env, prob=1.0, mix_schedule="always", box="sample", fg_r=0.0), 1.0),
    (lambda env: OTMix(env, prob=1.0, mix_schedule="always", box="sample", fg_r=0.0,
                       alpha=1.0, mode="bank", fraction=0.5), 0.5),
])
def test_cmo_and_otmix_declare_the_expected_label_distribution(make, share):
    h, n = 16, 4096
    env = MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=h, batch_size=n,
                   epochs=10)
    mixer = make(env)
    q, streams = minority_streams(n, h, fg_r=0.0)
    out = mixer(streams, ctx(2))
    declared = out.extras["label_prior"].double()
    want = mixed_label_prior(PI.numpy(), q, cutmix_fg_share(h, h, 1.0), prob=share)
    assert torch.allclose(declared, torch.from_numpy(want), atol=1e-6)
    assert torch.allclose(label_histogram(out), declared, atol=0.02)  # what the labels are
    assert declared[0] < PI[0] - 0.05  # flatter than π


def test_the_prior_averages_the_gate_and_the_window_over_the_run():
    """prob = 0.5 and the "repo" window (3 < e < E−3: 3 of 10 epochs) mix 0.15 of the samples;
    an unmixed batch carries the same prior as a mixed one (the run's expectation)."""
    env = MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=8, batch_size=4,
                   epochs=10)
    mixer = CMO(env, prob=0.5, mix_schedule="repo", fg_r=0.0)
    q = class_probabilities(COUNTS.numpy(), 0.0)
    want = mixed_label_prior(PI.numpy(), q, cutmix_fg_share(8, 8, 1.0), prob=0.5 * 3 / 10)
    _, streams = minority_streams(4, 8, fg_r=0.0)
    with pytest.warns(UserWarning, match="keeps mixing off"):
        out = mixer(streams, ctx())  # epoch 0: outside the window, unmixed
    assert bool(torch.all(out.lam == 1))
    assert torch.allclose(out.extras["label_prior"].double(), torch.from_numpy(want), atol=1e-6)
