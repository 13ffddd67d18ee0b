"""Mix plans on the host: a pure function of (seed, rank, epoch, step); the gate, window, boxes,
λ and mixed rows follow train/METHODS.md (When to mix; Boxes and λ); Q's crop window follows
torchvision's RandomResizedCrop; JPEG sizes come from the header."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from ltpipe.pipeline.minority import MinorityDraws
from ltpipe.pipeline.mix_plan import MixPlanner, PlanSpec
from ltpipe.pipeline.q_decode import crop_window, jpeg_size, requests

S = 32


def planner(seed=0, rank=0, b=16, **spec):
    base = {"prob": 0.5, "mix_schedule": "always", "epochs": 10, "alpha": 1.0,
            "per_sample": False}
    return MixPlanner(PlanSpec(**{**base, **spec}), seed, rank, b, S)


def fields(plan):
    return (plan.window, plan.gate, plan.mixed, plan.boxes, plan.lam, plan.flip, plan.crop_u)


def test_a_plan_is_a_pure_function_of_seed_rank_epoch_step():
    a, b = planner(seed=3, rank=1), planner(seed=3, rank=1)
    for epoch, step in [(0, 0), (2, 5), (7, 123)]:
        for x, y in zip(fields(a.draw(epoch, step)), fields(b.draw(epoch, step))):
            assert np.array_equal(x, y)  # a fresh planner (a resumed run, a worker) agrees
    first = a.draw(2, 5)
    for other in (a.draw(2, 6), a.draw(3, 5), planner(seed=4, rank=1).draw(2, 5),
                  planner(seed=3, rank=0).draw(2, 5)):
        assert not np.array_equal(first.crop_u, other.crop_u)


def test_plan_stream_shares_no_numbers_with_q_draws():
    """The plan and Q's ids are drawn from separate streams: a plan's numbers that also appear
    in Q's draws of the same step (e.g. Philox's counter word 0 offset by one block, which
    shifts one stream into the other by four numbers) would tie the box sizes and the gate to
    the foreground's classes."""
    for seed, rank, epoch, step in [(0, 0, 0, 0), (3, 1, 2, 5)]:
        q = MinorityDraws(np.arange(4), np.ones(4) / 4, seed, rank).generator(epoch, step)
        plan = planner(seed=seed, rank=rank).generator(epoch, step)
        q_bits, plan_bits = q.bit_generator.random_raw(4096), plan.bit_generator.random_raw(4096)
        assert np.intersect1d(q_bits, plan_bits).size == 0


def test_gate_window_and_fraction():
    p = planner(prob=0.5)
    opened = sum(p.draw(1, s).gate for s in range(400))
    assert 150 <= opened <= 250  # binomial(400, 0.5): 5 sigma = 50
    for s in range(20):
        plan = p.draw(1, s)
        assert plan.mixed.all() == plan.active and plan.mixed.any() == plan.active
        assert (plan.lam[~plan.mixed] == 1).all() and (plan.boxes[~plan.mixed] == 0).all()
    repo = planner(prob=1.0, mix_schedule="repo")
    assert [repo.draw(e, 0).active for e in range(10)] == [3 < e < 7 for e in range(10)]
    some = planner(prob=1.0, fraction=0.3)
    rows = [some.draw(0, s).mixed for s in range(30)]
    assert all(r.sum() == round(0.3 * 16) for r in rows)
    assert len({tuple(np.flatnonzero(r)) for r in rows}) > 1  # random rows, per step


@pytest.mark.parametrize("per_sample", [False, True])
def test_boxes_follow_the_cutmix_rule_and_lam_is_the_pixel_fraction(per_sample):
    p = planner(prob=1.0, per_sample=per_sample, alpha=1.0, b=64)
    areas = []
    for s in range(50):
        plan = p.draw(0, s)
        x0, y0, x1, y1 = plan.boxes.T.astype(np.int64)
        assert ((0 <= x0) & (x0 <= x1) & (x1 <= S) & (0 <= y0) & (y0 <= y1) & (y1 <= S)).all()
        np.testing.assert_allclose(plan.lam, 1 - (x1 - x0) * (y1 - y0) / S**2, rtol=0, atol=1e-6)
        # unclipped sides are even (2·⌊ch/2⌋) and equal (square image)
        inner = (x0 > 0) & (x1 < S) & (y0 > 0) & (y1 < S)
        assert ((x1 - x0)[inner] == (y1 - y0)[inner]).all() and ((x1 - x0)[inner] % 2 == 0).all()
        assert (len(np.unique(plan.boxes, axis=0)) == 1) != per_sample or s > 100
        areas.append(1 - plan.lam.mean())
    assert 0.25 < np.mean(areas) < 0.40  # the clipped box's mean area (METHODS.md: ~0.30-0.32)


def _jpeg(w, h, mode="RGB", **save):
    buf = io.BytesIO()
    Image.new(mode, (w, h), 100).save(buf, format="JPEG", **save)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def test_jpeg_size_reads_the_header():
    for w, h, mode, save in [(37, 21, "RGB", {}), (640, 480, "L", {}),
                             (301, 517, "RGB", {"progressive": True}),
                             (64, 48, "RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 40})]:
        assert jpeg_size(_jpeg(w, h, mode, **save)) == (w, h)
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_size(b"\x89PNG....")
    with pytest.raises(ValueError, match="no SOF"):
        jpeg_size(_jpeg(8, 8)[:20])


def test_crop_window_is_torchvision_rrc_and_cifar_shift():
    rng = np.random.default_rng(0)
    for _ in range(300):
        width, height = rng.integers(40, 600, size=2)
        x, y, w, h = crop_window(rng.random((10, 4)), int(width), int(height), "imagenet", 224)
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height and w > 0 and h > 0
        area, ratio = w * h / (width * height), w / h
        # within RandomResizedCrop's scale and ratio, up to rounding of the sides
        fallback = ((width, height), (width, round(width * 4 / 3)),
                    (round(height * 4 / 3), height))
        assert 0.08 * 0.9 < area <= 1 and 3 / 4 * 0.9 < ratio < 4 / 3 * 1.1 or (w, h) in fallback
    shifts = {crop_window(rng.random((10, 4)), 32, 32, "cifar", 32)[:2] for _ in range(3000)}
    assert shifts == {(a, b) for a in range(-4, 5) for b in range(-4, 5)}


def test_requests_decode_only_the_mixed_rows_box_windows():
    plan = planner(prob=1.0, per_sample=True, b=4).draw(0, 0)
    jpg = _jpeg(400, 300)
    cols = requests(plan, [jpg, None, jpg, jpg], tiles=True, preset="imagenet", size=S)
    jpgs, _, shape, roi_start, roi_end, out, mirror = cols
    assert jpgs[1] is not jpg and tuple(shape[1]) == (1, 1) and tuple(out[1]) == (1, 1)
    for i in (0, 2, 3):
        x0, y0, x1, y1 = plan.boxes[i]
        assert tuple(out[i]) == (y1 - y0, x1 - x0)
        assert shape[i].prod() < 400 * 300  # a window, not the image
        assert (roi_start[i] >= 0).all() and (roi_end[i] <= shape[i][::-1]).all()
        assert mirror[i] == plan.flip[i]
    full = requests(plan, [jpg] * 4, tiles=False, preset="imagenet", size=S)
    assert all(tuple(o) == (S, S) for o in full[5])
    win = crop_window(plan.crop_u[0], 400, 300, "imagenet", S)
    assert tuple(full[1][0]) == win[:2] and tuple(full[2][0]) == win[2:]
    assert math.isclose(full[4][0][0], win[3]) and math.isclose(full[4][0][1], win[2])


@pytest.mark.parametrize("preset", ["imagenet", "cifar"])
def test_request_fields_reach_dali_as_one_array_per_batch(preset):
    """Q's worker hands DALI each request field as one array with the batch as its leading axis:
    DALI moves a list of B small arrays between processes and into the pipeline sample by
    sample, which cost the main job's training process about 1.3 ms of CPU per step (a fifth
    of its epoch time on a loaded 2-core machine, bench/main_job.py). The jpgs stay a list
    (their sizes differ)."""
    plan = MixPlanner(PlanSpec(prob=1.0, mix_schedule="always", epochs=3, alpha=1.0,
                               per_sample=True, fraction=0.5), seed=0, rank=0, batch_size=6,
                      image_size=S).draw(0, 0)
    jpg = _jpeg(400, 300) if preset == "imagenet" else _jpeg(32, 32)
    jpegs = [jpg if mixed else None for mixed in plan.mixed]
    jpgs, *cols = requests(plan, jpegs, tiles=True, preset=preset, size=S)
    assert isinstance(jpgs, list) and len(jpgs) == 6
    dtypes = (np.int32, np.int32, np.float32, np.float32, np.float32, np.int32)
    shapes = ((6, 2), (6, 2), (6, 2), (6, 2), (6, 2), (6,))  # anchor .. out: [B, 2]; mirror [B]
    for col, dtype, shape in zip(cols, dtypes, shapes):
        assert isinstance(col, np.ndarray) and col.dtype == dtype and col.shape == shape
    assert np.array_equal(cols[5], (plan.flip & plan.mixed).astype(np.int32))  # mirror
    shape, out = cols[1], cols[4]
    assert (shape[~plan.mixed] == 1).all() and (out[~plan.mixed] == 1).all()  # placeholders
    boxes = plan.boxes[plan.mixed]
    assert np.array_equal(out[plan.mixed], np.stack([boxes[:, 3] - boxes[:, 1],
                                                     boxes[:, 2] - boxes[:, 0]], axis=1))


@pytest.mark.parametrize("rows", [None, 5])
def test_plan_tensors_are_the_plans_arrays_copied_once(rows):
    """One packed copy per (device, rows), shared by the loader (tiles) and the mixer."""
    import torch

    plan = MixPlanner(PlanSpec(prob=1.0, mix_schedule="always", epochs=3, alpha=1.0,
                               per_sample=True, fraction=0.5), seed=4, rank=0, batch_size=8,
                      image_size=32).draw(1, 2)
    b = 8 if rows is None else rows
    boxes, lam, mixed = plan.tensors("cpu", rows)
    assert (boxes.dtype, lam.dtype, mixed.dtype) == (torch.int32, torch.float32, torch.bool)
    assert boxes.shape == (b, 4) and boxes.is_contiguous()
    assert np.array_equal(boxes.numpy(), plan.boxes[:b])
    assert np.array_equal(lam.numpy(), plan.lam[:b])  # bit-exact through the int32 packing
    assert np.array_equal(mixed.numpy(), plan.mixed[:b]) and 0 < mixed.sum() < b
    assert plan.tensors("cpu", rows)[0] is boxes
