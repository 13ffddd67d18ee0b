"""Mixers none/ros/cutmix/mixup/cmo: shapes, lam = pixel fractions, fg from the minority stream,
p-gate and epoch schedule (METHODS.md: CMO; Boxes and λ; Deviations)."""

import pytest
import torch

from ltpipe.pipeline.batch import Batch
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.registry import build_mixer

B, H, W = 8, 16, 16
COUNTS = torch.tensor([100, 40, 10, 3])


def env():
    return MixerEnv(COUNTS, torch.device("cpu"), H, B, epochs=10)


def ctx(epoch=5, step=0, seed=0):
    return StepContext(epoch, 10, step, COUNTS, torch.Generator().manual_seed(seed))


def stream(offset, labels=None):
    """Sample i of the batch is the constant image offset + i (so every pixel names its source)."""
    ids = torch.arange(B) + offset
    images = ids.float().view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    labels = labels if labels is not None else torch.arange(B) % 4
    return Batch(images, labels, ids)


def own_fraction(mixed, bg_ids):
    """Per sample: fraction of pixels still holding the background image's value."""
    return (mixed.images == bg_ids.float().view(B, 1, 1, 1)).float().mean((1, 2, 3))


def test_none_is_identity():
    bg = stream(0)
    out = build_mixer("none", env=env())({"uniform": bg}, ctx())
    assert torch.equal(out.images, bg.images) and torch.equal(out.y_a, out.y_b)
    assert torch.equal(out.lam, torch.ones(B))


def test_ros_trains_on_the_minority_stream_alone():
    mixer = build_mixer("ros", env=env(), fg_r=0.5)
    assert mixer.streams == ("minority",) and mixer.fg_r == 0.5
    q = stream(100, labels=torch.full((B,), 3))
    out = mixer({"minority": q}, ctx())
    assert torch.equal(out.y_a, q.labels) and torch.equal(out.images, q.images)


@pytest.mark.parametrize("box", ["batch", "sample"])
def test_cmo_lam_is_the_background_pixel_fraction_and_fg_comes_from_q(box):
    mixer = build_mixer("cmo", env=env(), prob=1.0, mix_schedule="always", box=box)
    assert mixer.streams == ("uniform", "minority")
    bg, fg = stream(0), stream(100, labels=torch.tensor([3, 2, 3, 2, 3, 2, 3, 2]))
    fg = Batch(torch.cat([fg.images, fg.images[:2]]), torch.cat([fg.labels, fg.labels[:2]]),
               torch.cat([fg.index, fg.index[:2]]))  # Q longer than P: cut to P's size
    bg_ids = bg.index.clone()
    out = mixer({"uniform": bg, "minority": fg}, ctx())
    assert out.images.shape == (B, 3, H, W) and out.lam.shape == (B,)
    assert torch.allclose(own_fraction(out, bg_ids), out.lam, atol=0, rtol=0)
    # every non-background pixel holds the SAME-index foreground of Q, and y_b is its label
    pasted = out.images != bg_ids.float().view(B, 1, 1, 1)
    fg_vals = (torch.arange(B) + 100).float().view(B, 1, 1, 1).expand_as(out.images)
    assert torch.equal(out.images[pasted], fg_vals[pasted])
    assert torch.equal(out.y_a, bg.labels) and torch.equal(out.y_b, fg.labels[:B])
    boxes = out.extras["boxes"]
    if box == "batch":
        assert (boxes == boxes[0]).all()


def test_cmo_per_sample_boxes_differ_over_a_batch():
    mixer = build_mixer("cmo", env=env(), prob=1.0, mix_schedule="always", box="sample")
    out = mixer({"uniform": stream(0), "minority": stream(100)}, ctx(seed=3))
    assert len({tuple(b) for b in out.extras["boxes"].tolist()}) > 1


def test_cmo_gate_and_schedule():
    bg_ids = torch.arange(B)
    never = build_mixer("cmo", env=env(), prob=0.0, mix_schedule="always")
    out = never({"uniform": stream(0), "minority": stream(100)}, ctx())
    assert torch.equal(out.lam, torch.ones(B)) and torch.equal(own_fraction(out, bg_ids), torch.ones(B))
    repo = build_mixer("cmo", env=env(), prob=1.0, mix_schedule="repo")
    for epoch, active in [(0, False), (3, False), (4, True), (6, True), (7, False), (9, False)]:
        out = repo({"uniform": stream(0), "minority": stream(100)}, ctx(epoch=epoch, seed=1))
        assert (out.lam < 1).any().item() == active, epoch
    # p = 0.5: the gate opens on about half of the steps (binomial, 200 draws: 5 sigma ~ 0.18)
    half = build_mixer("cmo", env=env(), prob=0.5, mix_schedule="always")
    # (the gate is part of the step's mix plan, keyed by (seed, epoch, step, rank): steps vary)
    opened = sum(bool((half({"uniform": stream(0), "minority": stream(100)},
                             ctx(step=s)).lam < 1).any()) for s in range(200))
    assert 64 <= opened <= 136


@pytest.mark.parametrize("epoch", range(10))
def test_cmo_paper_schedule_is_off_only_in_the_last_three_epochs(epoch):
    """"paper" with E = 10: mixing in epochs 0..6, none in 7, 8, 9 (prob 1 by default)."""
    paper = build_mixer("cmo", env=env(), mix_schedule="paper")
    active = epoch <= 6
    assert paper.mixes_in(epoch, 10) == active
    out = paper({"uniform": stream(0), "minority": stream(100)}, ctx(epoch=epoch, seed=1))
    assert (out.lam < 1).any().item() == active, epoch


@pytest.mark.parametrize("name", ["cmo", "otmix"])
@pytest.mark.parametrize("schedule,given,want", [
    ("paper", None, 1.0), ("repo", None, 0.5), ("always", None, 0.5),  # the default follows it
    ("paper", 0.5, 0.5), ("paper", 0.0, 0.0), ("repo", 1.0, 1.0),  # an explicit prob wins
])
def test_default_prob_follows_the_schedule(name, schedule, given, want):
    """"paper" means every batch unless prob says otherwise; the repo's p is 0.5."""
    params = {} if given is None else {"prob": given}
    mixer = build_mixer(name, env=env(), mix_schedule=schedule, **params)
    assert mixer.prob == want and type(mixer.prob) is float


def test_cmo_paper_default_mixes_every_batch():
    """The default gate under "paper" opens on every step; an explicit prob = 0.5 does not."""
    def mixed_steps(**params):
        mixer = build_mixer("cmo", env=env(), mix_schedule="paper", alpha=4.0, **params)
        return sum(bool((mixer({"uniform": stream(0), "minority": stream(100)},
                               ctx(epoch=0, step=s)).lam < 1).any()) for s in range(40))

    assert mixed_steps() == 40  # α = 4: no box comes out empty
    assert 5 <= mixed_steps(prob=0.5) <= 35


def test_cutmix_pairs_within_p():
    mixer = build_mixer("cutmix", env=env(), prob=1.0, box="sample")
    bg = stream(0)
    out = mixer({"uniform": bg}, ctx(seed=2))
    partner = out.extras["fg_index"]  # pasted pixels come from the partner sample of P
    other = partner != torch.arange(B)  # a sample paired with itself keeps its pixels and label
    assert other.any() and (~other).any()  # seed 2 has both cases
    assert torch.equal(own_fraction(out, torch.arange(B))[other], out.lam[other])
    pasted = out.images != torch.arange(B).float().view(B, 1, 1, 1)
    src = partner.float().view(B, 1, 1, 1).expand_as(out.images)
    assert torch.equal(out.images[pasted], src[pasted])
    assert torch.equal(out.y_b, bg.labels[partner])


def test_mixup_blends_with_one_lam():
    mixer = build_mixer("mixup", env=env(), alpha=0.4)
    x = torch.rand(B, 3, H, W)
    bg = Batch(x.clone(), torch.arange(B) % 4, torch.arange(B))
    out = mixer({"uniform": bg}, ctx(seed=4))
    lam = out.lam[0]
    assert (out.lam == lam).all() and 0 <= lam <= 1
    perm = out.extras["fg_index"]
    assert torch.allclose(out.images, lam * x + (1 - lam) * x[perm], atol=1e-6)


def test_mixup_labels_weigh_what_the_pixels_weigh_in_bf16():
    """bf16 holds λ coarsely (0.3 -> 0.30078): the label weight is the pixel weight as stored."""
    mixer = build_mixer("mixup", env=env(), alpha=0.4)
    x = torch.rand(B, 3, H, W).to(torch.bfloat16)
    bg = Batch(x.clone(), torch.arange(B) % 4, torch.arange(B))
    out = mixer({"uniform": bg}, ctx(seed=4))
    assert out.lam.dtype == torch.float32
    assert torch.equal(out.lam, out.lam.to(torch.bfloat16).float())  # exactly a bf16 value
    perm = out.extras["fg_index"]
    w = out.lam.to(torch.bfloat16).view(B, 1, 1, 1)
    assert torch.equal(out.images, torch.lerp(x[perm], x, w))


def test_bad_params_name_themselves():
    with pytest.raises(ValueError, match="'foo'"):
        build_mixer("cmo", env=env(), foo=1)
    with pytest.raises(ValueError, match="prob"):
        build_mixer("cmo", env=env(), prob=2.0)
    for name in ("cmo", "otmix"):  # an explicit prob is still checked under "paper"
        with pytest.raises(ValueError, match="prob must be in"):
            build_mixer(name, env=env(), prob=1.5, mix_schedule="paper")
        with pytest.raises(ValueError, match="prob must be float"):
            build_mixer(name, env=env(), prob="high")
    with pytest.raises(ValueError, match="mix_schedule"):
        build_mixer("cutmix", env=env(), mix_schedule="sometimes")
    with pytest.raises(ValueError, match="unknown 'nope'"):
        build_mixer("nope", env=env())


def test_changed_rows_default_to_lam_below_one_unless_the_mixer_says():
    from ltpipe.pipeline.batch import MixedBatch

    y = torch.zeros(3, dtype=torch.long)
    lam = torch.tensor([1.0, 0.4, 0.0])
    assert MixedBatch(torch.zeros(3, 3, 2, 2), y, y, lam).changed_rows().tolist() == \
        [False, True, True]
    accepted = torch.tensor([True, False, False])  # M2m: lam 1, but a translated image
    assert MixedBatch(torch.zeros(3, 3, 2, 2), y, y, torch.ones(3),
                      {"changed": accepted}).changed_rows().tolist() == [True, False, False]
