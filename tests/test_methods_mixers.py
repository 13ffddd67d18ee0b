"""ResizeMix, Remix and the SMC mixer (METHODS.md: Conventions; SMC): boxes, labels, views."""

import pytest
import torch
from torch.nn import functional as F

from ltpipe.pipeline.batch import Batch
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.remix import Remix, remix_label_weight
from ltpipe.train.mixers.resizemix import ResizeMix
from ltpipe.train.mixers.smc import SMCMix
from ltpipe.train.mixers.view_aug import augment_view

COUNTS = torch.tensor([300, 100, 30, 10])
H = 16


def env():
    return MixerEnv(class_counts=COUNTS, device=torch.device("cpu"), image_size=H, batch_size=8,
                    epochs=10)


def ctx(seed=0, epoch=5):
    return StepContext(epoch=epoch, epochs=10, step=0, class_counts=COUNTS,
                       generator=torch.Generator().manual_seed(seed))


def batch(n=8, seed=0, offset=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 3, H, H, generator=g), torch.arange(n) % 4,
                 torch.arange(n) + offset)


def box_of(diff):
    """Bounding box (x0, y0, x1, y1) of the nonzero pixels of diff [3,H,W]."""
    ys, xs = torch.nonzero(diff.abs().sum(0) > 0, as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1


def test_resizemix_pastes_whole_source_and_lam_is_area():
    b = batch()
    for seed in range(5):
        out = ResizeMix(env())({"uniform": b}, ctx(seed))
        x0, y0, x1, y1 = box_of(out.images[0] - b.images[0])
        h, w = y1 - y0, x1 - x0
        assert round(0.1 * H) <= h <= round(0.8 * H) and h == w
        assert out.lam[0].item() == pytest.approx(1 - h * w / H**2)
        assert torch.all(out.lam == out.lam[0])  # one box per batch
        j = (out.y_b[0] == b.labels).nonzero()  # the source is a whole image of the batch, shrunk
        want = [F.interpolate(b.images[k:k + 1], (h, w), mode="bilinear", align_corners=False)[0]
                for k in j.flatten().tolist()]
        got = out.images[0, :, y0:y1, x0:x1]
        assert min((got - t).abs().max().item() for t in want) < 1e-5
        assert torch.equal(out.y_a, b.labels)


def test_remix_label_rule():
    lam = torch.tensor([0.3, 0.3, 0.7, 0.7, 0.3, 0.6])
    n_a = torch.tensor([300, 10, 10, 300, 100, 100])
    n_b = torch.tensor([10, 300, 300, 10, 100, 30])
    got = remix_label_weight(lam, n_a, n_b, kappa=3.0, tau=0.5)
    # row0: a much larger and λ<τ -> 0; row1: b much larger but 1−λ=.7 ≥ τ -> λ;
    # row2: b larger, 1−λ=.3<τ -> 1; row3: a larger but λ ≥ τ -> λ; row4: equal counts -> λ;
    # row5: ratio 3.33 ≥ κ but λ ≥ τ -> λ
    assert got.tolist() == pytest.approx([0.0, 0.3, 1.0, 0.7, 0.3, 0.6])


def test_remix_pixels_are_mixup_with_rebalanced_labels():
    b = batch()
    out = Remix(env())({"uniform": b}, ctx(3))
    lam = out.extras["pixel_lam"]
    perm = [(b.labels == y).nonzero().flatten().tolist() for y in out.y_b]
    for i in range(len(b)):
        assert any(torch.allclose(out.images[i], lam[i] * b.images[i] + (1 - lam[i]) * b.images[j],
                                  atol=1e-6) for j in perm[i])
    want = remix_label_weight(lam, COUNTS[out.y_a], COUNTS[out.y_b], 3.0, 0.5)
    assert torch.equal(out.lam, want.float())


def smc_streams():
    return {"uniform": batch(8, seed=0), "minority": batch(10, seed=1, offset=100)}


def test_smc_two_views_same_box_fg_resized_whole():
    m = SMCMix(env(), view_aug="none")
    s = smc_streams()
    out = m(s, ctx(1))
    assert out.images.shape == (16, 3, H, H) and out.extras["views"] == 2
    assert torch.equal(out.images[:8], out.images[8:])  # no extra augmentation: identical views
    x0, y0, x1, y1 = box_of(out.images[0] - s["uniform"].images[0])
    want = F.interpolate(s["minority"].images[:1], (y1 - y0, x1 - x0), mode="bilinear",
                         align_corners=False)[0]
    assert torch.allclose(out.images[0, :, y0:y1, x0:x1], want, atol=1e-5)
    lf = out.extras["lf"]
    assert lf[0].item() == pytest.approx((y1 - y0) * (x1 - x0) / H**2)
    assert torch.allclose(out.lam, 1 - lf)
    assert torch.equal(out.y_a, s["uniform"].labels.repeat(2))
    assert torch.equal(out.y_b, s["minority"].labels[:8].repeat(2))
    assert torch.equal(out.extras["y_fg"], out.y_b) and torch.equal(out.extras["y_bg"], out.y_a)


def test_smc_lf_range_and_fresh_views():
    m = SMCMix(env())
    lfs = []
    for seed in range(40):
        out = m(smc_streams(), ctx(seed))
        lfs.append(out.extras["lf"][0].item())
    assert not torch.allclose(out.images[:8], out.images[8:])  # A_1 ≠ A_2
    lfs = torch.tensor(lfs)
    # h = round(16·√lf), lf ∈ [0.2, 0.8]: realised area ratio within rounding of that range
    assert lfs.min() >= (round(16 * 0.2**0.5) / 16) ** 2 - 1e-6 and lfs.max() <= 0.85
    assert abs(lfs.mean().item() - 0.5) < 0.1


def test_view_augmentation_keeps_range_and_uint8():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, H, H), dtype=torch.uint8)
    y = augment_view(x, g)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    xf = torch.rand(4, 3, H, H)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    yn = augment_view((xf - m) / s, g, mean, std)
    raw = yn * s + m
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_bad_params():
    with pytest.raises(ValueError, match="view_aug"):
        SMCMix(env(), view_aug="x")
    with pytest.raises(ValueError, match="box"):
        ResizeMix(env(), box="x")
    with pytest.raises(ValueError, match="mix_schedule"):
        Remix(env(), mix_schedule="sometimes")


def test_smc_views_share_the_box_under_augmentation():
    """Constant components survive crop/flip unchanged, so the pasted region shows the box."""
    bg = Batch(torch.zeros(8, 3, H, H), torch.arange(8) % 4, torch.arange(8))
    fg = Batch(torch.ones(8, 3, H, H), torch.arange(8) % 4, torch.arange(8) + 50)
    out = SMCMix(env(), view_aug="crop", box="sample")({"uniform": bg, "minority": fg}, ctx(2))
    boxes = [box_of(out.images[i]) for i in range(16)]
    assert boxes[:8] == boxes[8:]  # view 2 of sample i has view 1's box
    assert len(set(boxes[:8])) > 1  # box="sample": one box per sample
    for i, (x0, y0, x1, y1) in enumerate(boxes[:8]):
        assert out.extras["lf"][i].item() == pytest.approx((x1 - x0) * (y1 - y0) / H**2)


@pytest.mark.parametrize("recipe", ["cifar100-lt-smc", "cifar100-lt-otmix", "cifar100-lt-m2m",
                                    "cifar100-lt-resizemix", "cifar100-lt-remix", "imagenet-lt-smc",
                                    "imagenet-lt-otmix", "imagenet-lt-m2m", "synthetic-smc",
                                    "synthetic-otmix", "synthetic-m2m"])
def test_method_recipes_build_their_mixer(recipe):
    from ltpipe.train.config import load_recipe, resolve
    from ltpipe.train.mixers.registry import build_mixer

    cfg = resolve(load_recipe(recipe), {}, {})
    name = cfg["train"]["mixer"]
    params = dict(cfg["mixer"][name])
    if name == "m2m":
        params["classifier"] = torch.nn.Linear(3 * H * H, 4)  # stands in for --m2m-classifier
    mixer = build_mixer(name, env=env(), **params)
    if name in ("smc", "otmix"):
        assert mixer.fg_r == 0.0  # paper recipes draw a class-uniform fg (METHODS.md)
    if name == "otmix":  # hyper-parameters; the repo's p and window; one box
        assert (mixer.alpha, mixer.omega, mixer.eps, mixer.mu) == (4.0, 0.05, 0.01, 1.0)
        assert (mixer.prob, mixer.mix_schedule, mixer.box) == (0.5, "repo", "batch")
    if name == "m2m":  # METHODS.md: M2m values; generation from 0.8·E (160 of 200)
        assert (mixer.beta, mixer.lam, mixer.gamma) == (0.999, 0.5, 0.9)
        assert (mixer.eta, mixer.T) == (0.1, 10)
        assert mixer.start_epoch == round(0.8 * cfg["train"]["epochs"])
    if name == "smc":
        assert cfg["train"]["loss"] == "la" and cfg["aux"]["smc"]["weight"] == 0.1


def test_smc_gate_gives_clean_views_and_draws_nothing_at_prob_one():
    """prob < 1: a gated-off batch is the two views of the backgrounds alone, labelled by
    themselves (lam 1, y_fg = y_bg, lf 0); about a share prob of the batches is mixed. prob = 1
    draws no gate, so the default run's random stream is the one it was before the gate."""
    s = smc_streams()
    clean = mixed = 0
    for seed in range(40):
        out = SMCMix(env(), view_aug="none", prob=0.5)(s, ctx(seed))
        if torch.all(out.lam == 1):
            clean += 1
            assert torch.equal(out.images, s["uniform"].images.repeat(2, 1, 1, 1))
            assert torch.equal(out.y_b, out.y_a) and torch.equal(out.extras["y_fg"], out.y_a)
            assert torch.equal(out.extras["lf"], torch.zeros(16))
        else:
            mixed += 1
    assert clean >= 10 and mixed >= 10
    always = SMCMix(env(), view_aug="none")(s, ctx(3))
    assert torch.equal(always.images, SMCMix(env(), view_aug="none", prob=1.0)(s, ctx(3)).images)
    with pytest.raises(ValueError, match="prob"):
        SMCMix(env(), prob=1.5)
