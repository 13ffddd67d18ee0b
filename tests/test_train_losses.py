"""Base losses against direct formulas, class weights (inverse, DRW switch), the mixed-label
criterion with per-term normalisers (train/METHODS.md, Losses)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltpipe.pipeline.batch import MixedBatch
from ltpipe.train.losses.base import ModelOutput
from ltpipe.train.losses.criterion import Criterion
from ltpipe.train.losses.per_sample import build_base_loss
from ltpipe.train.losses.weights import ClassWeights
from ltpipe.train.mixers.base import StepContext

COUNTS = torch.tensor([400, 100, 20, 4])
LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.1], [0.3, -0.2, 1.5, 0.0], [-1.0, 0.0, 0.2, 0.9]])
Y = torch.tensor([0, 2, 3])


def direct_ce(z, y):
    """-log softmax(z)[y], written out in float64."""
    z = z.double()
    return torch.stack([torch.logsumexp(z[i], 0) - z[i, y[i]] for i in range(len(y))])


def test_ce():
    got = build_base_loss("ce", COUNTS)(LOGITS, Y)
    assert torch.allclose(got.double(), direct_ce(LOGITS, Y), atol=1e-6)


def test_ldam_margins_and_scale():
    got = build_base_loss("ldam", COUNTS)(LOGITS.tanh(), Y)  # cosine logits live in [-1, 1]
    delta = [n ** -0.25 for n in COUNTS.tolist()]
    delta = [0.5 * d / max(delta) for d in delta]  # max margin 0.5, on the rarest class
    assert math.isclose(delta[3], 0.5) and math.isclose(delta[0], 0.5 * (4 / 400) ** 0.25)
    z = LOGITS.tanh().double().clone()
    for i, y in enumerate(Y.tolist()):
        z[i, y] -= delta[y]
    assert torch.allclose(got.double(), direct_ce(30 * z, Y), atol=1e-4)


@pytest.mark.parametrize("name,tau", [("bs", 1.0), ("la", 1.0), ("la", 0.5)])
def test_logit_adjusted(name, tau):
    params = {"tau": tau} if name == "la" else {}
    got = build_base_loss(name, COUNTS, **params)(LOGITS, Y)
    prior = COUNTS.double() / COUNTS.sum()
    want = direct_ce(LOGITS.double() + tau * prior.log(), Y)
    assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_focal(gamma):
    got = build_base_loss("focal", COUNTS, gamma=gamma)(LOGITS, Y)
    ce = direct_ce(LOGITS, Y)
    p = torch.exp(-ce)
    assert torch.allclose(got.double(), (1 - p) ** gamma * ce, atol=1e-6)


def test_unknown_loss_and_param():
    with pytest.raises(ValueError, match="unknown 'hinge'"):
        build_base_loss("hinge", COUNTS)
    with pytest.raises(ValueError, match="ldam"):
        build_base_loss("ldam", COUNTS, temperature=2)


def test_drw_that_never_starts_is_warned_about(caplog):
    ClassWeights("drw", COUNTS, epochs=10, drw_epoch=9)
    assert "never" not in caplog.text
    w = ClassWeights("drw", COUNTS, epochs=2, drw_epoch=24)  # a recipe's epoch, a short run
    assert all(w.at(e) is None for e in range(2))
    assert "drw starts at epoch 24 of a 2-epoch run: it never reweights" in caplog.text


def test_drw_switches_at_its_epoch():
    w = ClassWeights("drw", COUNTS, epochs=10, drw_epoch=6)
    assert w.at(0) is None and w.at(5) is None
    got = w.at(6)
    beta = 0.9999
    raw = torch.tensor([(1 - beta) / (1 - beta ** n) for n in COUNTS.tolist()], dtype=torch.float64)
    want = raw * len(COUNTS) / raw.sum()
    assert torch.allclose(got.double(), want, rtol=1e-6) and math.isclose(float(got.sum()), 4, rel_tol=1e-6)
    assert got[3] > got[0]  # the rarest class weighs most
    assert torch.equal(w.at(9), got)
    assert ClassWeights("drw", COUNTS, epochs=200).drw_epoch == 160  # default: 4/5 of the run


def test_inverse_and_none():
    inv = ClassWeights("inverse", COUNTS, epochs=5).at(0)
    want = (1 / COUNTS.double()) * 4 / (1 / COUNTS.double()).sum()
    assert torch.allclose(inv.double(), want, rtol=1e-6)
    assert ClassWeights("none", COUNTS, epochs=5).at(3) is None
    with pytest.raises(ValueError, match="reweight"):
        ClassWeights("sqrt", COUNTS, epochs=5)


def ctx(epoch):
    return StepContext(epoch, 10, 0, COUNTS, torch.Generator())


def test_mixed_label_wrapper_without_weights():
    crit = Criterion(build_base_loss("ce", COUNTS), ClassWeights("none", COUNTS, epochs=10))
    y_b = torch.tensor([1, 1, 0])
    lam = torch.tensor([0.25, 1.0, 0.6])
    out = crit(ModelOutput(LOGITS), MixedBatch(LOGITS, Y, y_b, lam), ctx(0))
    want = (lam.double() * direct_ce(LOGITS, Y) + (1 - lam.double()) * direct_ce(LOGITS, y_b)).mean()
    assert math.isclose(float(out.loss), float(want), rel_tol=1e-6)
    assert set(out.parts) == {"base"}


def test_mixed_label_wrapper_with_drw_normalises_each_term():
    crit = Criterion(build_base_loss("ce", COUNTS), ClassWeights("drw", COUNTS, epochs=10,
                                                                drw_epoch=2))
    y_b = torch.tensor([1, 3, 0])
    lam = torch.tensor([0.25, 0.5, 0.6])
    mixed = MixedBatch(LOGITS, Y, y_b, lam)
    w = crit.weights.at(2).double()
    term = lambda y, c: (c * w[y] * direct_ce(LOGITS, y)).sum() / w[y].sum()  # noqa: E731
    want = term(Y, lam.double()) + term(y_b, 1 - lam.double())
    got = crit(ModelOutput(LOGITS), mixed, ctx(2)).loss
    assert math.isclose(float(got), float(want), rel_tol=1e-6)
    # lam = 1 and y_b = y_a reduce to PyTorch's weighted-mean cross-entropy
    plain = crit(ModelOutput(LOGITS), MixedBatch(LOGITS, Y, Y, torch.ones(3)), ctx(2)).loss
    ref = F.cross_entropy(LOGITS, Y, weight=w.float())
    assert math.isclose(float(plain), float(ref), rel_tol=1e-6)
    before = crit(ModelOutput(LOGITS), mixed, ctx(1)).loss  # before the switch: unweighted
    assert not math.isclose(float(before), float(got), rel_tol=1e-3)
