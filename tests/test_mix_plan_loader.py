"""Plan-aware Q on the DALI CPU loader: a step computed from Q's tiles (ROI decode of each box's
window, tile paste) equals the step computed from Q's full decode (crop, resize, paste) for the
same plan, Q decodes nothing on unmixed steps, and a resumed loader returns the same tiles.

The bound inside the boxes: a tile resizes the box's exact source window (DALI ``resize`` with
a float ROI, widened by the antialiasing filter's reach and clipped to the crop like the full
image's resize), so it samples the source at the same points with the same filter; what is left
is float rounding in the resampling, seen as at most one uint8 level on a few pixels (measured:
≤ 0.2 % of the box's pixels, at edges and inside). The JPEG ROI decode itself is exact (libjpeg-
turbo without fancy upsampling). Outside the boxes both steps hold P's pixels bit for bit.
"""

import itertools

import numpy as np
import pytest
import torch

from ltpipe.pipeline.batch import Batch
from ltpipe.pipeline.dali_graph import IMAGENET_STD
from ltpipe.pipeline.loader import make_loader
from ltpipe.shards.write import write_shards
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.cutmix import step_plan
from ltpipe.train.mixers.registry import build_mixer

B, SEED = 8, 5
LEVEL = 1 / (255 * np.array(IMAGENET_STD, dtype=np.float32))  # one uint8 level, normalized [3]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shard sets: 96 px images (the "imagenet" preset resizes crops to 32 px: the resize
    filter spans up to 3 source pixels) and 32 px images ("cifar": pad-and-shift)."""
    root = tmp_path_factory.mktemp("planned")
    out = {}
    for stored in (96, 32):
        out[stored] = root / f"s{stored}"
        write_shards("synthetic", out[stored], classes=4, max_per_class=30, imbalance=5,
                     image_size=stored, samples_per_shard=20, seed=0, progress=False)
    return out


def loader(shards, mixer, preset, **kw):
    """Q decoded by DALI on every row (these tests are about its decode; the decoded cache's
    rows: tests/test_q_cache.py)."""
    return make_loader(shards, batch_size=B, preset=preset, image_size=32, seed=SEED,
                       mixer=mixer, num_threads=1, py_workers=1, q_cache_gb=0, **kw)


def mixer_of(name, params):
    env = MixerEnv(torch.tensor([30, 20, 13, 6]), torch.device("cpu"), 32, B, epochs=10,
                   seed=SEED)
    mixer = build_mixer(name, env=env, mix_schedule="always", **params)
    if name == "otmix":  # OT steps: pairs from the class term (the bank is empty at the start)
        mixer.force_ot = True
        mixer.fhat.copy_(torch.rand(4, 4, generator=torch.Generator().manual_seed(0)))
        mixer.has_fhat.fill_(True)
    return mixer


def ctx(step):
    return StepContext(0, 10, step, torch.tensor([30, 20, 13, 6]), torch.Generator())


CASES = [("cmo", dict(prob=1.0, box="batch")), ("cmo", dict(prob=1.0, box="sample")),
         ("cmo", dict(prob=0.5, box="sample")), ("cmo", dict(prob=0.5, box="batch")),
         ("otmix", dict(mode="bank", prob=1.0, fraction=0.5, box="sample"))]


@pytest.mark.parametrize("preset,stored", [("imagenet", 96), ("cifar", 32)])
@pytest.mark.parametrize("name,params", CASES)
def test_tiles_step_equals_full_decode_step(shards, preset, stored, name, params):
    mixer = mixer_of(name, params)
    full = loader(shards[stored], mixer, preset, q_decode="full")
    tiles = loader(shards[stored], mixer, preset, q_decode="tiles")
    active = 0
    for s, (a, b) in enumerate(itertools.islice(zip(full, tiles), 6)):
        assert b["minority"].tiles is not None and a["minority"].tiles is None
        assert torch.equal(a["uniform"].images, b["uniform"].images)  # same P pipeline
        pa, pb = a["uniform"].meta["plan"], b["uniform"].meta["plan"]
        assert np.array_equal(pa.boxes, pb.boxes) and pa.active == pb.active
        active += pa.active
        ma, mb = mixer(a, ctx(s)), mixer(b, ctx(s))
        assert torch.equal(ma.y_a, mb.y_a) and torch.equal(ma.y_b, mb.y_b)
        assert torch.equal(ma.lam, mb.lam)
        inside = torch.zeros(len(pa), 1, 32, 32, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(pa.boxes.tolist()):
            inside[i, :, y0:y1, x0:x1] = True
        inside = inside.expand_as(ma.images)
        assert torch.equal(ma.images[~inside], mb.images[~inside])  # P's pixels, bit for bit
        levels = ((ma.images - mb.images).abs() / torch.from_numpy(LEVEL).view(1, 3, 1, 1))
        levels = levels[inside]
        if levels.numel():
            assert levels.max() <= 1.001  # at most one uint8 level anywhere, edges included
            assert (levels > 0.5).float().mean() <= 0.02 and levels.mean() <= 0.02
    assert active > 0


def test_unmixed_steps_decode_nothing_of_q_and_mixed_ones_only_boxes(shards):
    mixer = mixer_of("cmo", dict(prob=0.5, box="batch"))
    counted = {}
    for mode in ("full", "tiles"):
        it = loader(shards[96], mixer, "imagenet", q_decode=mode, count_pixels=True)
        per_step, before = [], 0
        for step in itertools.islice(it, 8):
            per_step.append((it.decoded_pixels["minority"] - before,
                             step["uniform"].meta["plan"]))
            before = it.decoded_pixels["minority"]
        counted[mode] = per_step
    for (full_px, plan), (tile_px, _) in zip(counted["full"], counted["tiles"]):
        if not plan.active:
            assert tile_px == B  # B placeholders of 1 x 1
        else:
            assert B < tile_px < full_px
    assert any(not plan.active for _, plan in counted["tiles"])


def test_resumed_loader_returns_the_same_plans_and_tiles(shards):
    mixer = mixer_of("cmo", dict(prob=1.0, box="sample"))
    first = loader(shards[96], mixer, "imagenet")
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state_dict()
    want = [next(it) for _ in range(3)]
    resumed = loader(shards[96], mixer, "imagenet")
    resumed.load_state_dict(state)
    for w, g in zip(want, itertools.islice(resumed, 3)):
        assert w["uniform"].meta["step"] == g["uniform"].meta["step"]
        assert np.array_equal(w["uniform"].meta["plan"].boxes, g["uniform"].meta["plan"].boxes)
        assert torch.equal(w["minority"].index, g["minority"].index)
        assert torch.equal(w["minority"].tiles.pixels, g["minority"].tiles.pixels)


def test_a_mixer_without_a_loader_plan_draws_the_same_plan(shards):
    mixer = mixer_of("cmo", dict(prob=0.5, box="sample"))
    for step in itertools.islice(loader(shards[96], mixer, "imagenet"), 4):
        bg = step["uniform"]
        meta = {k: v for k, v in bg.meta.items() if k != "plan"}
        alone = step_plan(mixer, mixer.mix_plan,
                          {"uniform": Batch(torch.zeros(B, 3, 32, 32), bg.labels, bg.index,
                                            meta)}, ctx(99))
        assert np.array_equal(alone.boxes, bg.meta["plan"].boxes)
        assert alone.gate == bg.meta["plan"].gate


def test_otmix_exact_mode_keeps_whole_q_images_under_its_plan(shards):
    """Exact mode reads whole foregrounds (features): the plan still decides boxes, crop and
    flip, but Q is decoded in full; without a plan (a mixer that declares none) Q is as before."""
    exact = mixer_of("otmix", dict(mode="exact", prob=1.0))
    assert exact.mix_plan.tiles is False
    step = next(iter(loader(shards[96], exact, "imagenet")))
    q = step["minority"]
    assert q.tiles is None and q.images.shape == (B, 3, 32, 32) and "plan" in q.meta
    plain = next(iter(loader(shards[96], None, "imagenet")))
    assert "plan" not in plain["uniform"].meta and plain["minority"].tiles is None


@pytest.mark.parametrize("device, cpu_decode, want", [
    ("cpu", (), "tiles"),  # DALI CPU operators: tiles measured x1.46 faster at prob 0.5
    ("cuda", (), None),  # nvJPEG: the loader without a plan, measured faster on an H200
    ("cuda", ("minority",), "tiles"),  # Q decoded by CPU operators on a GPU machine
])
def test_auto_q_decode_takes_what_was_measured_faster(device, cpu_decode, want):
    from ltpipe.pipeline.loader import resolve_q_decode

    assert resolve_q_decode("auto", device, cpu_decode) == want
    assert resolve_q_decode("full", "cpu", ()) == "full"  # an explicit choice wins


@pytest.mark.parametrize("preset,stored", [("imagenet", 96), ("cifar", 32)])
def test_tiles_cut_from_whole_decodes_equal_roi_decoded_tiles(shards, preset, stored):
    """q_decode="tiles-whole" (for nvJPEG's hardware decoder, which takes no ROI) decodes the
    whole image of each mixed row and cuts the same window: the same tiles, pixel for pixel;
    an unmixed row still decodes only the 8 x 8 placeholder."""
    mixer = mixer_of("cmo", dict(prob=0.5, box="sample"))
    roi = loader(shards[stored], mixer, preset, q_decode="tiles")
    whole = loader(shards[stored], mixer, preset, q_decode="tiles-whole", count_pixels=True)
    before, seen = 0, set()
    for a, b in itertools.islice(zip(roi, whole), 6):
        ta, tb = a["minority"].tiles, b["minority"].tiles
        assert torch.equal(ta.pixels, tb.pixels) and torch.equal(ta.boxes, tb.boxes)
        plan = b["uniform"].meta["plan"]
        decoded = whole.decoded_pixels["minority"] - before
        before = whole.decoded_pixels["minority"]
        area = (plan.boxes[:, 2] - plan.boxes[:, 0]) * (plan.boxes[:, 3] - plan.boxes[:, 1])
        rows = int((plan.mixed & (area > 0)).sum()) if plan.active else 0
        assert decoded == rows * stored * stored + (B - rows) * 64
        seen.add(plan.active)
    assert seen == {True, False}
