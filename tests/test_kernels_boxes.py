"""Box/lambda sampling (METHODS.md: CMO; SMC; Boxes and λ): exact areas, clipping, Beta law."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from ltpipe.kernels import cutmix_boxes, resizemix_boxes, sample_lam


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _area_lam(boxes, H, W):
    b = boxes.numpy().astype(np.int64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (1.0 - area / float(H * W)).astype(np.float32)


def test_importing_the_kernels_does_not_import_numba():
    code = "import sys, ltpipe.kernels; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("alpha", [1.0, 4.0, 0.5])
def test_lam0_follows_beta(alpha):
    lam0 = sample_lam(4000, alpha, _gen(1)).double().numpy()
    assert lam0.min() >= 0 and lam0.max() <= 1
    assert stats.kstest(lam0, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_lam_is_exact_area_fraction_and_boxes_are_clipped():
    H, W = 32, 40
    lam0 = torch.cat([sample_lam(500, 1.0, _gen(2)), torch.tensor([0.0, 1.0, 1e-7, 0.999999])])
    boxes, lam = cutmix_boxes(lam0, H, W, _gen(3))
    assert boxes.dtype == torch.int32 and boxes.shape == (504, 4) and lam.dtype == torch.float32
    x0, y0, x1, y1 = boxes.T
    assert bool(((0 <= x0) & (x0 <= x1) & (x1 <= W) & (0 <= y0) & (y0 <= y1) & (y1 <= H)).all())
    assert np.array_equal(lam.numpy(), _area_lam(boxes, H, W))
    assert lam[-3] == 1.0  # lam0 = 1: empty box, sample kept (METHODS.md: Boxes and λ)
    assert lam[-4] >= 0.0  # lam0 = 0: full-size box clipped around the centre


def test_cutmix_rule_matches_the_reference_formula():
    # CMO's boxes with the same draws: s = sqrt(1-lam0), ch = floor(H s), centre +- ch//2, clipped.
    H, W = 24, 16
    lam0 = sample_lam(300, 1.0, _gen(4))
    boxes, _ = cutmix_boxes(lam0, H, W, _gen(5))
    g = _gen(5)
    cy = torch.randint(0, H, (300,), generator=g).numpy()
    cx = torch.randint(0, W, (300,), generator=g).numpy()
    for k, l0 in enumerate(lam0.double().numpy()):
        cut = math.sqrt(1.0 - l0)
        ch, cw = int(H * cut), int(W * cut)
        want = [np.clip(cx[k] - cw // 2, 0, W), np.clip(cy[k] - ch // 2, 0, H),
                np.clip(cx[k] + cw // 2, 0, W), np.clip(cy[k] + ch // 2, 0, H)]
        assert boxes[k].tolist() == want


def test_per_batch_box_is_shared_and_seeded():
    lam0 = sample_lam(8, 1.0, _gen(6))
    boxes, lam = cutmix_boxes(lam0, 32, 32, _gen(7), per_sample=False)
    assert bool((boxes == boxes[0]).all()) and bool((lam == lam[0]).all())
    again, _ = cutmix_boxes(lam0, 32, 32, _gen(7), per_sample=False)
    assert torch.equal(boxes, again)
    assert not torch.equal(cutmix_boxes(lam0, 32, 32, _gen(8))[0], cutmix_boxes(lam0, 32, 32,
                                                                                _gen(9))[0])


def test_resizemix_boxes_follow_the_smc_rule():
    H, W = 32, 24
    boxes, lam = resizemix_boxes(2000, H, W, _gen(10))
    h = (boxes[:, 3] - boxes[:, 1]).double()
    w = (boxes[:, 2] - boxes[:, 0]).double()
    assert bool((h >= 1).all()) and bool((w >= 1).all())
    assert int(boxes[:, [0, 1]].min()) >= 0 and int(boxes[:, 2].max()) <= W
    assert int(boxes[:, 3].max()) <= H
    assert np.array_equal(lam.numpy(), _area_lam(boxes, H, W))
    lf = (h / H) ** 2  # sqrt(lf) = h/H up to rounding: lf within [0.2, 0.8] widened by a pixel
    assert float(lf.min()) > 0.2 * (1 - 2 / math.sqrt(0.2) / H) and float(lf.max()) < 0.85
    assert bool((h / H - w / W).abs().max() <= 1.0 / min(H, W))  # same scale on both axes
    # top/left uniform over the valid range: both extremes occur
    assert int(boxes[:, 1].min()) == 0 and bool((boxes[:, 3] == H).any())


def test_tiny_image_resizemix_box_is_at_least_one_pixel():
    boxes, lam = resizemix_boxes(50, 1, 1, _gen(11))
    assert bool((boxes == torch.tensor([0, 0, 1, 1], dtype=torch.int32)).all())
    assert bool((lam == 0).all())


@pytest.mark.parametrize("call, match", [
    (lambda: sample_lam(4, 0.0), "alpha"),
    (lambda: sample_lam(-1, 1.0), "batch_size"),
    (lambda: cutmix_boxes(torch.rand(2, 2), 8, 8), "lam0"),
    (lambda: cutmix_boxes(torch.rand(2), 0, 8), "H"),
    (lambda: resizemix_boxes(2, 8, 8, scale=(0.9, 0.1)), "scale"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
