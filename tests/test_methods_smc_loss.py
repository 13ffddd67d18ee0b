"""SMC loss (train/METHODS.md, SMC): vectorised formula vs a slow loop over anchors and positives."""

import math

import pytest
import torch

from ltpipe.pipeline.batch import MixedBatch
from ltpipe.train.losses.base import ModelOutput
from ltpipe.train.losses.smc import ProjectionHead, SMCLoss, positive_masks, smc_loss


def reference_smc(z, y_fg, y_bg, lf, tau):
    """Direct transcription of [SMC paper Eq.4] with Python loops (fp64)."""
    n = len(z)
    z = [[float(v) for v in row] for row in z]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    totals = {"F": 0.0, "B": 0.0, "X": 0.0}
    per_anchor = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        lse = math.log(sum(math.exp(dot(z[i], z[j]) / tau) for j in others))
        fset = [j for j in others if y_fg[j] == y_fg[i]]
        bset = [j for j in others if y_bg[j] == y_bg[i]]
        xset = [j for j in others if j not in fset and j not in bset
                and (y_fg[j] == y_bg[i] or y_bg[j] == y_fg[i])]
        ell = {}
        for name, s in (("F", fset), ("B", bset), ("X", xset)):
            ell[name] = 0.0 if not s else -sum(dot(z[i], z[p]) / tau - lse for p in s) / len(s)
            totals[name] += ell[name] / n
        lfi = lf[i] if isinstance(lf, list) else lf
        per_anchor.append((lfi * ell["F"] + (1 - lfi) * ell["B"] + 0.5 * ell["X"]) / 1.5)
    return sum(per_anchor) / n, totals


def _batch(seed=0, n=12, c=4, d=8):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y_fg = torch.randint(0, c, (n,), generator=g)
    y_bg = torch.randint(0, c, (n,), generator=g)
    return z, y_fg, y_bg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_scalar_lf(seed):
    z, y_fg, y_bg = _batch(seed)
    got, parts = smc_loss(z, y_fg, y_bg, 0.37, temperature=0.1)
    want, totals = reference_smc(z.tolist(), y_fg.tolist(), y_bg.tolist(), 0.37, 0.1)
    assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want))
    for k in "FBX":
        assert abs(parts[f"L_{k}"].item() - totals[k]) <= 1e-5 * max(1.0, abs(totals[k]))


def test_matches_loop_reference_per_anchor_lf_fp32():
    z, y_fg, y_bg = _batch(5, n=10)
    lf = torch.linspace(0.2, 0.8, 10, dtype=torch.float64)
    got, _ = smc_loss(z.float(), y_fg, y_bg, lf.float(), temperature=0.1)
    want, _ = reference_smc(z.tolist(), y_fg.tolist(), y_bg.tolist(), lf.tolist(), 0.1)
    assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want))


def test_each_positive_type_weighted_as_specified():
    """With only F, only B or only X positives the loss is lf·L_F/1.5, (1−lf)·L_B/1.5 or
    0.5·L_X/1.5 respectively."""
    z, _, _ = _batch(3, n=4)
    tau, lf = 0.1, 0.3
    cases = {  # (y_fg, y_bg) chosen so that exactly one positive type is non-empty
        "F": ([0, 0, 1, 1], [2, 3, 4, 5]),
        "B": ([0, 1, 2, 3], [4, 4, 5, 5]),
        "X": ([0, 1, 2, 3], [1, 0, 3, 2]),
    }
    coef = {"F": lf / 1.5, "B": (1 - lf) / 1.5, "X": 0.5 / 1.5}
    for kind, (fg, bg) in cases.items():
        masks = dict(zip("FBX", positive_masks(torch.tensor(fg), torch.tensor(bg))))
        assert masks[kind].any() and all(not m.any() for k, m in masks.items() if k != kind)
        loss, parts = smc_loss(z, torch.tensor(fg), torch.tensor(bg), lf, tau)
        assert parts[f"L_{kind}"].item() > 0
        assert loss.item() == pytest.approx(coef[kind] * parts[f"L_{kind}"].item(), rel=1e-9)


def test_no_positives_gives_zero_and_views_share_box_labels():
    z, _, _ = _batch(4, n=3)
    loss, _ = smc_loss(z, torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), 0.5)
    assert loss.item() == 0.0


def test_aux_term_reads_head_and_extras_fp32_under_autocast():
    torch.manual_seed(0)
    term = SMCLoss(env=None, feature_dim=16)
    head = term.make_head()
    assert isinstance(head, ProjectionHead) and term.weight == 0.1 and term.temperature == 0.1
    feats = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        proj = head(feats)
    assert proj.dtype == torch.float32 and proj.shape == (8, 128)
    assert torch.allclose(proj.norm(dim=1), torch.ones(8), atol=1e-5)
    y_fg, y_bg = torch.tensor([0, 1, 2, 3] * 2), torch.tensor([1, 1, 0, 0] * 2)
    out = ModelOutput(torch.randn(8, 4), feats, {"smc": proj})
    mixed = MixedBatch(torch.zeros(8, 3, 4, 4), y_bg, y_fg, torch.full((8,), 0.6),
                       {"y_fg": y_fg, "y_bg": y_bg, "lf": torch.tensor(0.4), "views": 2})
    value = term(out, mixed, None)
    want, _ = smc_loss(proj.double(), y_fg, y_bg, 0.4)
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="no head 'smc'"):
        term(ModelOutput(out.logits, feats, {}), mixed, None)
