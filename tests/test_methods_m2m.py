"""M2m (METHODS.md: M2m): confidence threshold, rejection rate, seeds from larger classes only."""

import pytest
import torch
from torch import nn

from ltpipe.pipeline.batch import Batch
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.m2m import M2m

COUNTS = torch.tensor([1000, 100, 10])


class Toy(nn.Module):
    """A frozen linear classifier on centred pixels: easy to push to any class within L2 ≈ 1."""

    def __init__(self, seed=0, c=3, d=3 * 4 * 4, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(scale * torch.randn(c, d, generator=g))

    def forward(self, x):
        return (x.flatten(1) - 0.5) @ self.w.t()


def env(epochs=10, counts=COUNTS):
    return MixerEnv(class_counts=counts, device=torch.device("cpu"), image_size=4, batch_size=8,
                    epochs=epochs)


def m2m(epochs=10, counts=COUNTS, **params):
    """M2m on raw [0,1] pixels (mean 0, std 1)."""
    return M2m(env(epochs, counts), mean=(0, 0, 0), std=(1, 1, 1), **params)


def ctx(epoch, seed=0, model=None):
    return StepContext(epoch=epoch, epochs=10, step=0, class_counts=COUNTS,
                       generator=torch.Generator().manual_seed(seed), model=model)


def batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(labels)
    return Batch(torch.rand(len(y), 3, 4, 4, generator=g), y, torch.arange(len(y)))


def test_before_start_epoch_plain_uniform_and_default_start():
    m = m2m(epochs=200, classifier=Toy())
    assert m.start_epoch == 160
    m = m2m(classifier=Toy(), start_epoch=5)
    streams = {"uniform": batch([0, 0, 1]), "balanced": batch([2, 2, 2], seed=1)}
    out = m(streams, ctx(4))
    assert out.images is streams["uniform"].images
    assert torch.equal(out.y_a, streams["uniform"].labels)
    assert torch.all(out.lam == 1)


def test_after_start_epoch_the_batch_comes_from_the_balanced_stream():
    """from start_epoch on, the batch (images and labels) is the class-balanced stream's."""
    m = m2m(classifier=Toy(), start_epoch=5, gamma=0.999999)  # γ ≈ 1: no row is replaced
    streams = {"uniform": batch([0] * 8), "balanced": batch([2, 1, 2, 1, 0, 2, 1, 2], seed=1)}
    out = m(streams, ctx(5))
    assert not out.extras["accepted"].any()
    assert torch.equal(out.y_a, streams["balanced"].labels)
    assert torch.equal(out.images, streams["balanced"].images)
    assert torch.equal(out.extras["index"], streams["balanced"].index)


def test_constructor_defaults_are_the_papers_values():
    """METHODS.md: M2m Values: β=0.999, λ=0.5, γ=0.9, η=0.1, T=10, start at 0.8·E."""
    m = M2m(env(200), classifier=Toy())
    assert (m.beta, m.lam, m.gamma, m.eta, m.T, m.start_epoch) == (0.999, 0.5, 0.9, 0.1, 10, 160)


def test_generated_fraction_per_class_is_one_minus_n_over_n_max():
    """G = {i : Bernoulli(1 − n_{y_i}/n_max)}. β = 0 makes p_ij ∈ {0, 1}, and the head class
    in every batch gives each other row a seed, so a row is generated iff its Bernoulli fires:
    n = n_max/2 → 1/2, n = n_max/4 → 3/4 (always generating: 1; n/Σn in place of n/n_max:
    0.71 and 0.86). The head class itself is never generated."""
    m = m2m(counts=torch.tensor([100, 50, 25]), classifier=Toy(), beta=0.0)
    labels = torch.tensor([0] * 10 + [1] * 500 + [2] * 500)
    gen = torch.Generator().manual_seed(0)
    rates = torch.zeros(3)
    draws = 4
    for _ in range(draws):
        generate, seed, p_seed = m.choose(labels, gen)
        assert torch.all(p_seed[generate] == 1) and torch.all(seed[~generate] == -1)
        rates += torch.stack([generate[labels == k].float().mean() for k in range(3)]) / draws
    # 2000 rows per class: σ ≤ 0.011, so 0.04 is about 4σ and far from both wrong rules
    assert rates.tolist() == pytest.approx([0.0, 0.5, 0.75], abs=0.04)


def test_each_gradient_step_moves_every_sample_by_eta():
    """the step is η·∇L/‖∇L‖₂ per sample (not one norm over the batch). T = 0 gives x0 + δ;
    T = 1 from the same generator state adds exactly one step; mid-grey images keep every pixel
    away from the clamp."""
    m = m2m(classifier=Toy(0), T=0, eta=0.1)
    c = ctx(0)
    x0 = torch.full((4, 3, 4, 4), 0.5)
    k, k0 = torch.tensor([1, 2, 1, 2]), torch.tensor([0, 0, 0, 0])
    x_delta = m._generate(x0, k, k0, 0.0, 1.0, c, torch.Generator().manual_seed(3))
    m.T = 1
    x1 = m._generate(x0, k, k0, 0.0, 1.0, c, torch.Generator().manual_seed(3))
    assert 0 < x1.min() and x1.max() < 1  # no clamp active
    moved = (x1 - x_delta).flatten(1).norm(dim=1)
    assert moved.tolist() == pytest.approx([0.1] * 4, abs=1e-5)


def test_generation_lowers_f_seed_class_logit():
    """L = CE(g(x*), k) + λ·f(x*)[k0] is minimised, so f's seed-class logit falls. g has zero
    weights (no CE gradient), so only the λ term moves x*."""
    g_model, f_model = Toy(0, scale=0.0), Toy(1)
    m = m2m(classifier=g_model)  # λ = 0.5, T = 10, η = 0.1
    c = ctx(0, model=f_model)
    x0 = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    k, k0 = torch.tensor([1, 2, 1, 2, 1, 2]), torch.tensor([0, 0, 1, 0, 0, 1])
    x = m._generate(x0, k, k0, 0.0, 1.0, c, torch.Generator().manual_seed(0))
    before = f_model(x0).gather(1, k0[:, None]).squeeze(1)
    after = f_model(x).gather(1, k0[:, None]).squeeze(1)
    # each of the 10 steps lowers f[k0] by η·‖w_k0‖ ≈ 0.1·7 while the clamp is inactive; δ ≤ 0.5
    # moves it by at most 0.5·‖w_k0‖
    assert torch.all(after < before - 2.0), (before, after)


def test_accepted_samples_reach_gamma_and_f_untouched():
    g_model, f_model = Toy(0), Toy(1)
    m = m2m(classifier=g_model, start_epoch=0, gamma=0.9, beta=0.0)  # β = 0: p = 1 for any gap
    f_model.train()
    labels = [0] * 8 + [1] * 8 + [2] * 16
    b = batch(labels)
    out = m({"uniform": b, "balanced": b}, ctx(0, model=f_model))
    acc, seeds = out.extras["accepted"], out.extras["seed_labels"]
    conf = torch.softmax(g_model(out.images), 1).gather(1, out.y_a[:, None]).squeeze(1)
    assert acc.sum() >= 4  # the toy g is easy to fool: most generated rows pass
    assert torch.all(conf[acc] >= 0.9)
    # every accepted row kept its label k and was translated from a strictly larger class
    assert torch.all(COUNTS[seeds[acc]] > COUNTS[out.y_a[acc]])
    assert torch.equal(out.images[~acc], b.images[~acc])  # rejected rows: the real sample
    assert torch.equal(out.changed_rows(), acc)  # the epoch's mixed_share counts translations
    assert not acc[:8].any() and torch.all(seeds[:8] == -1)  # the head class is never generated
    assert f_model.training and f_model.w.grad is None and g_model.w.grad is None


def test_generation_raises_target_probability():
    g_model = Toy(0)
    m = m2m(classifier=g_model, start_epoch=0, gamma=0.999999, beta=0.0)
    b = batch([0] * 16 + [2] * 16)
    c = ctx(0)
    gen_rows, seed, _ = m.choose(b.labels, torch.Generator().manual_seed(0))
    x0 = b.images[seed[gen_rows]]
    k = b.labels[gen_rows]
    x = m._generate(x0, k, b.labels[seed[gen_rows]], 0.0, 1.0, c, c.generator)
    before = torch.softmax(g_model(x0), 1).gather(1, k[:, None])
    after = torch.softmax(g_model(x), 1).gather(1, k[:, None])
    assert (after > before).float().mean() == 1.0
    assert (x - x0).flatten(1).norm(dim=1).max() <= 0.5 + 10 * 0.1 + 1e-5  # δ ≤ .5, T·η ≤ 1


def test_rejection_rate_follows_formula():
    """gamma ≈ 0 and T = 0 isolate the rejection rule: E[accept_i] = Σ_j p_ij² / Σ_j p_ij."""
    m = m2m(classifier=Toy(), start_epoch=0, gamma=1e-9, T=0, beta=0.999)
    labels = torch.tensor([0] * 8 + [1] * 24 + [2] * 32)
    p = m.seed_probabilities(labels)
    assert p[40, 0].item() == pytest.approx(1 - 0.999 ** 990)
    assert torch.all(p[:8] == 0) and torch.all(p[8:32, 8:] == 0)  # seeds only from larger classes
    expect_acc = (p ** 2).sum(1) / p.sum(1).clamp(min=1e-12)  # per row, given it is generated
    expect_gen = 1 - COUNTS[labels].float() / 1000
    expected = (expect_gen * expect_acc).sum().item()
    total, reps = 0.0, 150
    for s in range(reps):
        b = batch(labels.tolist(), seed=s)
        total += m({"uniform": b, "balanced": b}, ctx(0, seed=s)).extras["accepted"].sum().item()
    rate = total / reps
    var = (expect_gen * expect_acc * (1 - expect_gen * expect_acc)).sum().item()
    assert abs(rate - expected) <= 4 * (var / reps) ** 0.5, (rate, expected)


def test_bad_params_are_one_line_errors():
    with pytest.raises(ValueError, match="needs a frozen classifier"):
        M2m(env())
    with pytest.raises(ValueError, match="gamma"):
        m2m(classifier=Toy(), gamma=1.5)
