"""ltpipe as a library in a training loop of one's own: the mixed-loss helper, Mixer.mix (the
trainer's draws without StepContext plumbing), the in-place paste and the schedule warning."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.train.losses.mixed import mixed_loss
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.cmo import CMO
from ltpipe.train.mixers.cutmix import CutMix
from ltpipe.train.step_keys import step_generator

B, H, C = 8, 16, 4
COUNTS = torch.tensor([100, 40, 10, 3])


def env(seed=0, rank=0):
    return MixerEnv(COUNTS, torch.device("cpu"), H, B, epochs=10, seed=seed, rank=rank,
                    world=rank + 1)


def streams():
    """P: sample i is the constant image i; Q: the constant image 100 + i."""
    def batch(offset, labels):
        ids = torch.arange(B) + offset
        return Batch(ids.float().view(B, 1, 1, 1).expand(B, 3, H, H).contiguous(), labels, ids)
    return {"uniform": batch(0, torch.arange(B) % C), "minority": batch(100, torch.full((B,), 3))}


def test_mixed_loss_weights_y_a_by_lam_for_any_criterion():
    torch.manual_seed(0)
    logits = torch.randn(B, C)
    y_a, y_b = torch.arange(B) % C, torch.full((B,), 3)
    lam = torch.linspace(0.1, 0.9, B)
    mixed = MixedBatch(torch.zeros(B, 3, 2, 2), y_a, y_b, lam)
    want = (lam * F.cross_entropy(logits, y_a, reduction="none")
            + (1 - lam) * F.cross_entropy(logits, y_b, reduction="none")).mean()
    assert torch.allclose(mixed_loss(F.cross_entropy, logits, mixed), want)
    focal_like = lambda x, y: F.nll_loss(F.log_softmax(x, 1), y, reduction="none")  # noqa: E731
    assert torch.allclose(mixed_loss(focal_like, logits, mixed), want)
    # a criterion that returns the batch mean: refused when lam varies per row ...
    with pytest.raises(ValueError, match="reduction='none'"):
        mixed_loss(nn.CrossEntropyLoss(), logits, mixed)
    # ... and exact when it does not (one box per batch)
    same = MixedBatch(mixed.images, y_a, y_b, torch.full((B,), 0.3))
    want = 0.3 * F.cross_entropy(logits, y_a) + 0.7 * F.cross_entropy(logits, y_b)
    assert torch.allclose(mixed_loss(nn.CrossEntropyLoss(), logits, same), want)
    assert torch.allclose(mixed_loss(nn.CrossEntropyLoss(), logits, MixedBatch.unmixed(
        Batch(mixed.images, y_a, torch.arange(B)))), F.cross_entropy(logits, y_a))


@pytest.mark.parametrize("make", [
    lambda e: CMO(e, prob=1.0, mix_schedule="always", box="sample"),  # draws from its mix plan
    lambda e: CutMix(e, prob=1.0, box="sample"),  # draws from the step's generator
], ids=["cmo", "cutmix"])
def test_mix_draws_what_the_trainer_draws_for_the_same_step(make):
    mixer = make(env(seed=7, rank=1))
    ours = mixer.mix(streams(), epoch=3, step=41)

    def trainer(seed, epoch, step, rank):
        g = step_generator(seed, epoch, step, rank, torch.device("cpu"))
        return mixer(streams(), StepContext(epoch, 10, step, COUNTS, g))

    same = trainer(7, 3, 41, 1)
    assert torch.equal(ours.images, same.images) and torch.equal(ours.lam, same.lam)
    for other in (trainer(7, 3, 42, 1), trainer(7, 4, 41, 1)):
        assert not torch.equal(other.lam, ours.lam)  # each step draws its own boxes
    assert not torch.equal(mixer.mix(streams(), epoch=3, step=42).lam, ours.lam)


def test_mix_pastes_in_place_unless_asked_for_a_copy():
    mixer = CMO(env(), prob=1.0, mix_schedule="always")
    s = streams()
    kept = s["uniform"].images
    before = kept.clone()
    out = mixer.mix(s, epoch=0, step=0, inplace=False)
    assert torch.equal(kept, before) and not torch.equal(out.images, before)
    out = mixer.mix(s, epoch=0, step=0)
    assert out.images is kept and not torch.equal(kept, before)


def test_a_mixer_left_off_by_its_schedule_warns_once_per_run():
    mixer = CMO(env(), prob=1.0)  # mix_schedule="repo": off while epoch <= 3
    with pytest.warns(UserWarning, match=r'mix_schedule="repo" keeps mixing off in epoch 0') as w:
        out = mixer.mix(streams(), epoch=0, step=0)
    assert bool((out.lam == 1).all())
    assert w[0].filename == __file__  # the user's line, not torch's module machinery
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixer.mix(streams(), epoch=1, step=5)  # once per run, not once per step
        CMO(env(), prob=1.0, mix_schedule="always").mix(streams(), epoch=0, step=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under DDP only rank 0 says it
        CMO(env(rank=1), prob=1.0).mix(streams(), epoch=0, step=0)


def test_env_from_shards_reads_the_train_counts(tiny_shards):
    from ltpipe.shards.format import load_manifest

    e = MixerEnv.from_shards(tiny_shards, epochs=5, batch_size=4)
    want = load_manifest(tiny_shards).split("train").class_counts
    assert e.class_counts.tolist() == list(want) and (e.rank, e.world, e.epochs) == (0, 1, 5)


@pytest.mark.parametrize("factory", ["dali", "torch"])
def test_a_loader_built_from_the_mixer_reads_its_streams_and_exponent(tiny_shards, factory):
    from ltpipe.pipeline.loader import make_loader
    from ltpipe.pipeline.torch_loader import make_torch_loader

    make = make_loader if factory == "dali" else make_torch_loader
    e = MixerEnv.from_shards(tiny_shards, epochs=5, batch_size=4)
    mixer = CMO(e, prob=1.0, mix_schedule="always", fg_r=0.0)
    loader = make(tiny_shards, batch_size=4, mixer=mixer, num_threads=1)
    assert loader.streams == ("uniform", "minority") and loader.r == 0.0
    with pytest.raises(ValueError, match="r: 1.0 given, but the mixer CMO has fg_r=0.0"):
        make(tiny_shards, batch_size=4, mixer=mixer, r=1.0)
    with pytest.raises(ValueError, match=r"streams: \('uniform',\) given, but the mixer CMO"):
        make(tiny_shards, batch_size=4, mixer=mixer, streams=("uniform",))
    # without a mixer: P and Q with the paper's r = 1, as before
    plain = make(tiny_shards, batch_size=4, num_threads=1)
    assert plain.streams == ("uniform", "minority") and plain.r == 1.0


def test_mixed_loss_hands_the_batchs_label_prior_to_a_loss_that_reads_it():
    from ltpipe.train.losses import build_base_loss

    torch.manual_seed(1)
    logits = torch.randn(B, C)
    y_a, y_b = torch.arange(B) % C, torch.full((B,), 3)
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1])
    mixed = MixedBatch(torch.zeros(B, 3, 2, 2), y_a, y_b, torch.full((B,), 0.6),
                       {"label_prior": prior})
    la = build_base_loss("la", COUNTS, prior="mixed")
    shifted = logits + prior.log()  # tau = 1: logits + log P_mix
    want = (0.6 * F.cross_entropy(shifted, y_a, reduction="none")
            + 0.4 * F.cross_entropy(shifted, y_b, reduction="none")).mean()
    assert torch.allclose(mixed_loss(la, logits, mixed), want)
