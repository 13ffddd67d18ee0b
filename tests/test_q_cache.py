"""Q's decoded cache (pipeline/q_cache.py) on the DALI CPU loader and real shards.

- It holds the images Q draws most (p_i = q(y_i)/n_{y_i}, highest first), as many as the
  budget holds, and its expected coverage is their Σ p_i.
- A cached tile equals the tile DALI decodes from a copy stored at the cache's size (``ltpipe
  shard --max-size S``, S the cache's bound) within one uint8 level; whole images too (OTmix's
  exact mode); its rows decode only a placeholder.
- A resumed loader keeps the checkpoint's cache, whatever its own budget, and returns the same
  draws and pixels bit for bit; each DDP rank holds the same cache and draws its own rows.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from ltpipe.pipeline.dali_graph import IMAGENET_STD
from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.minority import MinorityDraws
from ltpipe.pipeline.mix_plan import PlanSpec
from ltpipe.pipeline.q_decode import crop_windows
from ltpipe.shards.write import write_shards
from ltpipe.train.mixers.base import MixerEnv, StepContext
from ltpipe.train.mixers.registry import build_mixer

B, SEED, SIDE = 8, 5, 48
LEVEL = torch.from_numpy(1 / (255 * np.array(IMAGENET_STD, dtype=np.float32))).view(1, 3, 1, 1)
TILES = PlanSpec(prob=1.0, mix_schedule="always", epochs=10, alpha=1.0, per_sample=True)
WHOLE = PlanSpec(prob=1.0, mix_schedule="always", epochs=10, alpha=1.0, per_sample=False,
                 tiles=False)
IMAGE_BYTES = SIDE * SIDE * 3  # every image of the copy is 48 x 48


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """96 px originals (4 classes, 63 train images) and their copy at --max-size 48,
    the cache's bound; 32 px images for the "cifar" preset."""
    root = tmp_path_factory.mktemp("qcache")
    write_shards("synthetic", root / "s96", classes=4, max_per_class=30, imbalance=5,
                 image_size=96, samples_per_shard=20, seed=0, progress=False)
    write_shards(f"shards:{root / 's96'}", root / "s48", max_size=SIDE, samples_per_shard=20,
                 progress=False)
    write_shards("synthetic", root / "s32", classes=4, max_per_class=30, imbalance=5,
                 image_size=32, samples_per_shard=20, seed=0, progress=False)
    return root


def loader(path, plan=TILES, preset="imagenet", **kw):
    kw.setdefault("q_cache_side", SIDE)
    return make_loader(path, batch_size=B, preset=preset, image_size=32, seed=SEED,
                       mix_plan=plan, num_threads=1, py_workers=1, **kw)


def levels(a, b):
    """|a − b| in uint8 levels (normalised images, or raw uint8 pixels)."""
    diff = (a.float() - b.float()).abs()
    return diff if a.dtype == torch.uint8 else diff / LEVEL


@pytest.mark.parametrize("r", [1.0, 0.0])  # paper meaning: q_k ∝ n_k^-r
def test_the_cache_holds_the_most_drawn_images_the_budget_fits(shards, r):
    images = 20
    it = loader(shards / "s48", r=r, q_cache_gb=images * IMAGE_BYTES / 1e9)
    cache = it.q_cache
    counts = it.class_counts.astype(np.float64)
    labels = it.data.labels
    per_image = counts ** -r / (counts ** -r).sum() / counts  # q_k / n_k
    p = per_image[labels]
    assert len(cache.ids) == images and cache.nbytes == images * IMAGE_BYTES
    assert p[cache.ids].min() >= p[np.setdiff1d(np.arange(p.size), cache.ids)].max()
    edge = p == p[cache.ids].min()  # ties (a class cut by the budget): the lowest ids
    taken = np.isin(np.flatnonzero(edge), cache.ids)
    assert taken.any() and not np.any(np.diff(taken.astype(int)) > 0)
    assert math.isclose(cache.expected, p[cache.ids].sum(), rel_tol=1e-12)
    assert np.array_equal(cache.mask(), np.isin(np.arange(p.size), cache.ids))
    # the draws' own probabilities are these
    draws = MinorityDraws.for_r(labels, it.class_counts, r, SEED, 0)
    assert np.allclose(draws.sample_probabilities(), p)


def test_budgets_and_who_gets_a_cache(shards):
    assert loader(shards / "s48", q_cache_gb=0).q_cache is None
    assert loader(shards / "s48", q_cache_gb=1e-9).q_cache is None  # not even one image fits
    assert loader(shards / "s48", plan=None).q_cache is None  # no plan (SMC): no cache
    full = loader(shards / "s48").q_cache  # "auto": this tiny set fits whole
    assert len(full.ids) == 63 and math.isclose(full.expected, 1.0)
    assert "Q cache: 63 of 63 images at <= 48 px" in full.describe()
    for bad, says in ((-1, "must be 'auto' or GB in"), ("lots", "must be 'auto' or GB in"),
                      (1e5, "must be 'auto' or GB in"), (True, "must be 'auto' or GB in"),
                      (float("nan"), "must be a finite number")):
        with pytest.raises(ValueError, match=f"q_cache_gb: {says}"):
            loader(shards / "s48", q_cache_gb=bad)
    with pytest.raises(ValueError, match=r"q_cache_side: must be an integer in \[8, 4096\]"):
        loader(shards / "s48", q_cache_side=0)


def test_images_above_the_bound_are_cached_at_it(shards):
    cache = loader(shards / "s96", q_cache_gb="auto").q_cache
    assert set(cache.heights.tolist()) == set(cache.widths.tolist()) == {SIDE}
    assert cache.nbytes == len(cache.ids) * IMAGE_BYTES


def _old_crop_window(u, width, height, preset, size):
    """The per-image crop rule before crop_windows (torchvision's RandomResizedCrop)."""
    if preset == "cifar":
        ax, ay = (np.minimum((u[0, :2] * 9).astype(np.int64), 8) - 4).tolist()
        return ax, ay, size, size
    area = width * height
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    for a_u, r_u, y_u, x_u in u:
        target = area * (0.08 + 0.92 * a_u)
        ratio = math.exp(lo + (hi - lo) * r_u)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(x_u * (width - w + 1)), int(y_u * (height - h + 1)), w, h
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@pytest.mark.parametrize("preset", ["imagenet", "cifar"])
def test_crop_windows_of_all_rows_at_once_follow_the_per_image_rule(preset):
    g = np.random.default_rng(0)
    n = 3000
    u = g.random((n, 10, 4))
    u[: n // 3, :, 0] = 1.0  # whole-area attempts: the ratio often fails, the fallback runs
    widths = g.integers(1, 900, n)
    heights = np.where(g.random(n) < 0.3, g.integers(1, 40, n), g.integers(1, 900, n))
    got = crop_windows(u, widths, heights, preset, 32)
    want = [_old_crop_window(u[i], int(widths[i]), int(heights[i]), preset, 32) for i in range(n)]
    assert got.tolist() == [list(w) for w in want]


@pytest.mark.parametrize("preset,path,dtype", [("imagenet", "s48", torch.float32),
                                               ("cifar", "s32", torch.float32),
                                               ("imagenet", "s48", torch.uint8)])
def test_cached_tiles_equal_dali_tiles_from_the_copy_at_the_cache_size(shards, preset, path,
                                                                      dtype):
    """uint8: the loader's raw pixels (normalised later, pipeline/normalize.py)."""
    decoded = loader(shards / path, preset=preset, q_cache_gb=0, dtype=dtype)
    cached = loader(shards / path, preset=preset, q_cache_gb="auto", count_pixels=True,
                    dtype=dtype)
    served = 0
    for a, b in itertools.islice(zip(decoded, cached), 6):
        assert torch.equal(a["minority"].index, b["minority"].index)  # the same draws
        bg = a["uniform"].images
        ta, tb = a["minority"].tiles, b["minority"].tiles
        assert tb.cached is not None and not torch.any(tb.boxes)  # every row from the cache
        want, got = ta.paste_(bg.clone()), tb.paste_(bg.clone())
        assert levels(want, got).max() <= 1.0 + 1e-3
        assert (levels(want, got) > 0.5).float().mean() <= 0.01
        assert not torch.equal(got, bg)
        served += b["uniform"].meta["q_cache"][0]
    assert served == 6 * B
    assert cached.q_on_host and cached.decoded_pixels["minority"] == 0  # Q decodes nothing


@pytest.mark.parametrize("images", [None, 25])  # every image Q can draw; 25 of the 63
def test_with_a_cache_q_leaves_the_pipeline_and_decodes_only_its_misses(shards, monkeypatch,
                                                                        images):
    """With a cache, Q is drawn on the host and only the rows the cache lacks are decoded, by a
    pipeline of their own (none when the cache is complete): the same steps (P, Q's ids and
    labels, the cached rows, the pasted pixels, bit for bit) as with Q in the main pipeline,
    placeholders and all; fewer decoded pixels; resume is exact either way, also from a
    checkpoint whose pipeline held Q (states from before Q could leave it)."""
    from ltpipe.pipeline.loader import DaliLoader

    budget = "auto" if images is None else images * IMAGE_BYTES / 1e9
    host = loader(shards / "s48", q_cache_gb=budget, count_pixels=True)
    assert host.q_cache.complete == (images is None)
    assert host.q_on_host and "minority" not in host._order()
    with monkeypatch.context() as m:
        m.setattr(DaliLoader, "_q_can_leave", lambda self: False)
        piped = loader(shards / "s48", q_cache_gb=budget, count_pixels=True)
    assert not piped.q_on_host
    misses = []

    def same(a, b):
        assert torch.equal(a["uniform"].images, b["uniform"].images)
        qa, qb = a["minority"], b["minority"]
        assert torch.equal(qa.index, qb.index) and torch.equal(qa.labels, qb.labels)
        for k in ("slots", "windows", "boxes", "flips"):
            assert torch.equal(getattr(qa.tiles.cached, k), getattr(qb.tiles.cached, k))
        assert a["uniform"].meta["q_cache"] == b["uniform"].meta["q_cache"]
        bg = a["uniform"].images
        assert torch.equal(qa.tiles.paste_(bg.clone()), qb.tiles.paste_(bg.clone()))

    steps = len(host) + 2  # into the second epoch
    for a, b in itertools.islice(zip(piped, host), steps):
        same(a, b)
        served, drawn = b["uniform"].meta["q_cache"]
        assert (served == drawn) == (images is None) or served == drawn
        rows = b["minority"].tiles.rows
        misses.append(len(rows))
        assert np.all(np.diff(rows) > 0) and len(rows) <= drawn - served
    if images is None:
        assert host._q_pipe is None and host.decoded_pixels["minority"] == 0 and not any(misses)
    else:  # the misses were decoded, and nothing for the cached rows
        assert any(misses) and 0 < host.decoded_pixels["minority"] < \
            piped.decoded_pixels["minority"]
    def epochs(source):
        while True:
            yield from source

    for source in (host, piped):
        it = epochs(source)
        next(it)
        state = source.state_dict()
        assert state["q_on_host"] == source.q_on_host
        want = [next(it) for _ in range(len(source) + 1)]  # across the epoch's end
        for old_state in (False, True) if source is piped else (False,):
            saved = {k: v for k, v in state.items() if not (old_state and k == "q_on_host")}
            resumed = loader(shards / "s48", q_cache_gb=budget, count_pixels=True)
            resumed.load_state_dict(saved)
            assert resumed.q_on_host == (source.q_on_host and not old_state)
            got = list(itertools.islice(epochs(resumed), len(want)))
            assert len(got) == len(want)
            for w, g in zip(want, got):
                same(w, g)


def test_whole_images_of_cached_rows_for_a_mixer_that_reads_them(shards):
    """OTmix's exact mode reads Q's whole S x S images: cached rows are resized from the cache
    into them, within a level of DALI's full decode, also when only some rows are cached."""
    for gb in ("auto", 25 * IMAGE_BYTES / 1e9):
        decoded = loader(shards / "s48", plan=WHOLE, q_cache_gb=0)
        cached = loader(shards / "s48", plan=WHOLE, q_cache_gb=gb)
        for a, b in itertools.islice(zip(decoded, cached), 4):
            qa, qb = a["minority"], b["minority"]
            assert qb.tiles is None and qb.images.shape == qa.images.shape == (B, 3, 32, 32)
            assert levels(qa.images, qb.images).max() <= 1.0 + 1e-3


def test_cmo_mixes_the_same_step_from_the_cache(shards):
    """CMO's paste of cached rows (a partial cache: both kinds of rows in a step)."""
    counts = torch.from_numpy(loader(shards / "s48", q_cache_gb=0).class_counts)
    env = MixerEnv(counts, torch.device("cpu"), 32, B, epochs=10, seed=SEED)
    cmo = build_mixer("cmo", env=env, mix_schedule="always", prob=1.0, box="sample")
    decoded = make_loader(shards / "s48", batch_size=B, preset="imagenet", image_size=32,
                          seed=SEED, mixer=cmo, num_threads=1, py_workers=1, q_cache_gb=0)
    cached = make_loader(shards / "s48", batch_size=B, preset="imagenet", image_size=32,
                         seed=SEED, mixer=cmo, num_threads=1, py_workers=1, q_cache_side=SIDE,
                         q_cache_gb=25 * IMAGE_BYTES / 1e9)
    kinds = set()
    for s, (a, b) in enumerate(itertools.islice(zip(decoded, cached), 5)):
        ctx = StepContext(0, 10, s, env.class_counts, torch.Generator())
        slots = b["minority"].tiles.cached.slots
        kinds |= {bool(v >= 0) for v in slots.tolist()}
        ma, mb = cmo(a, ctx), cmo(b, ctx)
        assert torch.equal(ma.lam, mb.lam) and torch.equal(ma.y_b, mb.y_b)
        assert levels(ma.images, mb.images).max() <= 1.0 + 1e-3
    assert kinds == {True, False}


def test_a_resumed_loader_keeps_the_checkpoints_cache(shards):
    first = loader(shards / "s48", q_cache_gb=20 * IMAGE_BYTES / 1e9)
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state_dict()
    assert state["q_cache"] == {"images": 20, "side": SIDE}
    want = [next(it) for _ in range(3)]
    for budget in ("auto", 0):  # another budget (an "auto" one follows the free memory)
        resumed = loader(shards / "s48", q_cache_gb=budget)
        resumed.load_state_dict(state)
        assert resumed.q_cache.state() == state["q_cache"]
        for w, g in zip(want, itertools.islice(resumed, 3)):
            assert torch.equal(w["minority"].index, g["minority"].index)
            tw, tg = w["minority"].tiles, g["minority"].tiles
            assert torch.equal(tw.pixels, tg.pixels) and torch.equal(tw.boxes, tg.boxes)
            for k in ("slots", "windows", "boxes", "flips"):
                assert torch.equal(getattr(tw.cached, k), getattr(tg.cached, k))
            bg = w["uniform"].images
            assert torch.equal(tw.paste_(bg.clone()), tg.paste_(bg.clone()))
    off = loader(shards / "s48", q_cache_gb=0)
    off.load_state_dict(off.state_dict())  # a run without a cache stays without one
    assert off.q_cache is None
    on = loader(shards / "s48")
    on.load_state_dict(off.state_dict())
    assert on.q_cache is None


def test_each_rank_holds_the_same_cache_and_draws_its_own_rows(shards):
    budget = 25 * IMAGE_BYTES / 1e9
    ranks = [loader(shards / "s48", rank=r, world=2, q_cache_gb=budget) for r in (0, 1)]
    assert np.array_equal(ranks[0].q_cache.ids, ranks[1].q_cache.ids)
    assert ranks[0].q_cache.expected == ranks[1].q_cache.expected
    for r, it in enumerate(ranks):
        draws = MinorityDraws.for_r(it.data.labels, it.class_counts, 1.0, SEED, r)
        decoded = loader(shards / "s48", rank=r, world=2, q_cache_gb=0)
        for s, (a, b) in enumerate(itertools.islice(zip(decoded, it), 3)):
            ids = b["minority"].index.numpy()
            assert np.array_equal(ids, draws.draw(0, s, B)[:len(ids)])
            slots = b["minority"].tiles.cached.slots.numpy()
            hit = it.q_cache.slot_of[ids] >= 0
            assert b["uniform"].meta["q_cache"] == (int(hit.sum()), len(ids))
            assert np.array_equal(slots >= 0, hit)  # prob 1: every cached row pastes
            bg = a["uniform"].images
            got = b["minority"].tiles.paste_(bg.clone())
            assert levels(a["minority"].tiles.paste_(bg.clone()), got).max() <= 1.0 + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("place", ["cuda", "pinned"])
def test_on_the_gpu_cached_rows_equal_the_reference_and_nvjpeg_tiles(shards, monkeypatch, place):
    """The cache decoded by nvJPEG, on the device or in pinned host memory (the kernel reads it
    through its device mapping): the CUDA kernel's rows equal the torch reference bit for bit,
    and nvJPEG's own tiles of the same windows within a level (fp16 output)."""
    from ltpipe.kernels.crop_paste import SourceImages, crop_resize_paste_reference
    from ltpipe.pipeline import q_cache

    torch.cuda.init()  # DALI's Python workers are then spawned, as in training
    if place == "pinned":  # as when the device has no room for the budget
        monkeypatch.setattr(q_cache, "DEVICE_ROOM", 0.0)
    kw = dict(device="cuda", dtype=torch.float16, channels_last=True)
    cached = loader(shards / "s48", q_cache_gb="auto", **kw)
    cache = cached.q_cache
    assert cache.place == place and cache.source.pixels.is_cuda == (place == "cuda")
    decoded = loader(shards / "s48", q_cache_gb=0, q_decode="tiles-whole", **kw)
    host = SourceImages(*(t.cpu() for t in (cache.source.pixels, cache.source.offsets,
                                            cache.source.shapes)))
    for a, b in itertools.islice(zip(decoded, cached), 3):
        bg = a["uniform"].images
        rows = b["minority"].tiles.cached
        got = b["minority"].tiles.paste_(bg.clone())
        ref = crop_resize_paste_reference(bg.cpu().clone(), host, *(t.cpu() for t in (
            rows.slots, rows.windows, rows.boxes, rows.flips)), mean=cache._mean,
            inv_std=cache._inv_std)
        assert torch.equal(got.cpu().view(torch.int16), ref.view(torch.int16))
        want = a["minority"].tiles.paste_(bg.clone())
        assert levels(want.cpu(), got.cpu()).max() <= 1.2  # one level, and fp16's rounding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_a_partial_cache_decodes_its_misses_in_their_own_pipeline(shards,
                                                                             monkeypatch):
    """nvJPEG: Q's misses from their own pipeline paste what Q in the main pipeline pastes,
    within a level (the hardware decoder's share of a batch depends on the batch, so the two
    may decode a row on different engines) and fp16's rounding."""
    from ltpipe.pipeline.loader import DaliLoader

    torch.cuda.init()
    kw = dict(device="cuda", dtype=torch.float16, channels_last=True,
              q_cache_gb=25 * IMAGE_BYTES / 1e9, q_decode="tiles-whole")
    host = loader(shards / "s48", **kw)
    with monkeypatch.context() as m:
        m.setattr(DaliLoader, "_q_can_leave", lambda self: False)
        piped = loader(shards / "s48", **kw)
    assert host.q_on_host and not host.q_cache.complete and not piped.q_on_host
    misses = 0
    for a, b in itertools.islice(zip(piped, host), 6):
        assert torch.equal(a["minority"].index, b["minority"].index)
        bg = a["uniform"].images
        want = a["minority"].tiles.paste_(bg.clone())
        got = b["minority"].tiles.paste_(bg.clone())
        assert levels(want.cpu(), got.cpu()).max() <= 1.2
        misses += len(b["minority"].tiles.rows)
    assert misses > 0
