"""The DALI loader on real shards, DALI CPU operators: epochs, eval, Q, resume, layout."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.minority import MinorityDraws
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.shards.write import write_shards

N_TRAIN, N_VAL = 100, 60  # classes=6, max_per_class=40, imbalance=10 -> train (40,25,15,10,6,4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "s"
    m = write_shards("synthetic", out, classes=6, max_per_class=40, imbalance=10, image_size=32,
                     samples_per_shard=25, seed=0, progress=False)
    assert m.split("train").num_samples == N_TRAIN and m.split("val").num_samples == N_VAL
    return out


def rows_of(shards, split):
    return np.load(shards / split / "index.npy")


def epoch_ids(loader, stream="uniform"):
    steps = list(loader)
    return steps, np.concatenate([s[stream].index.numpy() for s in steps])


def test_uniform_epoch_sees_every_sample_once_and_class_counts(shards):
    loader = make_loader(shards, batch_size=16, streams=("uniform",), seed=1)
    labels = rows_of(shards, "train")["label"]
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        steps, ids = epoch_ids(loader)
        assert len(steps) == len(loader) == 7
        assert np.array_equal(np.sort(ids), np.arange(N_TRAIN))
        got = np.concatenate([s["uniform"].labels.numpy() for s in steps])
        assert np.array_equal(got, labels[ids])
        # P's class frequencies are exactly the data's class counts
        assert np.array_equal(np.bincount(got, minlength=6), loader.class_counts)
        seen.append(ids)
    assert not np.array_equal(seen[0], seen[1])  # reshuffled between epochs
    assert loader.num_classes == 6 and loader.skipped == 0


@pytest.mark.parametrize("world,batch", [(2, 16), (3, 16), (3, 11)])
def test_uniform_epoch_exactly_once_across_ranks(shards, world, batch):
    loaders = [make_loader(shards, batch_size=batch, streams=("uniform",), seed=4, rank=r,
                           world=world) for r in range(world)]
    assert len({len(x) for x in loaders}) == 1  # DDP: the same number of steps on every rank
    for _ in range(2):  # epoch 1 rotates the DALI shards between ranks
        ids = [epoch_ids(x)[1] for x in loaders]
        allids = np.concatenate(ids)
        if batch == 11:
            # floor(100/3)=33 is a multiple of 11: the two 33-sample ranks return one duplicate
            # in their last step so that all ranks run 4 steps
            assert allids.size == N_TRAIN + 2
            allids = np.unique(allids)
        assert np.array_equal(np.sort(allids), np.arange(N_TRAIN))


@pytest.mark.parametrize("world,batch", [(1, 7), (2, 7), (7, 8)])
def test_eval_loader_every_sample_exactly_once(shards, world, batch):
    labels = rows_of(shards, "val")["label"]
    ids = []
    for rank in range(world):
        loader = make_loader(shards, split="val", batch_size=batch, streams=("uniform",),
                             rank=rank, world=world)
        steps, got = epoch_ids(loader)
        assert len(steps) == len(loader) and all(len(s["uniform"]) > 0 for s in steps)
        assert np.array_equal(np.concatenate([s["uniform"].labels.numpy() for s in steps]),
                              labels[got])
        assert np.array_equal(epoch_ids(loader)[1], got)  # same order every epoch
        ids.append(got)
    ids = np.concatenate(ids)
    assert ids.size == N_VAL and np.array_equal(np.sort(ids), np.arange(N_VAL))


def test_minority_stream_matches_counter_draws_and_q(shards):
    batch, seed = 50, 5
    loader = make_loader(shards, batch_size=batch, streams=("minority", "balanced"), r=1.0,
                         seed=seed)
    labels = rows_of(shards, "train")["label"]
    counts = loader.class_counts
    ref = {name: MinorityDraws.for_r(labels, counts, r, seed=seed, rank=0)
           for name, r in (("minority", 1.0), ("balanced", 0.0))}
    got = {"minority": [], "balanced": []}
    for epoch in range(20):  # 2 steps per epoch, 2,000 draws per stream
        for step, s in enumerate(loader):
            for name in got:
                idx = s[name].index.numpy()
                assert np.array_equal(idx, ref[name].draw(epoch, step, batch)[:len(idx)])
                assert np.array_equal(s[name].labels.numpy(), labels[idx])
                got[name].append(idx)
    for name, r in (("minority", 1.0), ("balanced", 0.0)):
        ids = np.concatenate(got[name])
        expected = class_probabilities(counts, r) * ids.size
        assert stats.chisquare(np.bincount(labels[ids], minlength=6), expected).pvalue > 1e-3


def run_steps(loader, n):
    out = []
    while len(out) < n:
        for s in loader:
            out.append({k: (b.index.clone(), b.labels.clone(), b.images.clone())
                        for k, b in s.items()})
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("stop,world,rank,streams", [
    (4, 1, 0, ("uniform", "minority")),  # mid-epoch (7 steps per epoch)
    (4, 2, 1, ("uniform", "balanced")),  # exactly at the epoch end (4 steps), rotated shard next
    (3, 1, 0, ("minority",)),  # Q alone: DALI restores only the iteration counter
])
def test_resume_gives_the_uninterrupted_sequence(shards, stop, world, rank, streams):
    kw = dict(batch_size=16, streams=streams, seed=3, world=world, rank=rank)
    full = run_steps(make_loader(shards, **kw), 12)  # crosses at least one epoch boundary
    first = make_loader(shards, **kw)
    head = run_steps(first, stop)
    state = first.state_dict()
    per_epoch = first.steps_per_epoch
    assert (state["epoch"], state["step"]) == divmod(stop, per_epoch)
    del first
    resumed = make_loader(shards, **kw)
    resumed.load_state_dict(state)
    tail = run_steps(resumed, 12 - stop)
    for a, b in zip(full, head + tail):
        for name in streams:
            assert torch.equal(a[name][0], b[name][0]) and torch.equal(a[name][1], b[name][1])
            assert torch.equal(a[name][2], b[name][2])  # augmentation RNG restored too
    with pytest.raises(ValueError, match="loader state: seed"):
        other = make_loader(shards, **{**kw, "seed": 4})
        other.load_state_dict(state)


def test_a_checkpoint_inside_an_epoch_leaves_the_epoch_as_it_is(shards):
    """The trainer checkpoints between steps, the last one included; the epoch's loop must
    still end after its steps (a checkpoint on the last step once restarted it)."""
    plain = make_loader(shards, batch_size=16, seed=3)
    want = [s["uniform"].index.clone() for s in plain]
    checked = make_loader(shards, batch_size=16, seed=3)
    got, states = [], []
    for s in itertools.islice(checked, len(want) + 2):  # bounded: the bug never ended
        got.append(s["uniform"].index.clone())
        states.append(checked.state_dict())
    assert len(got) == len(want) == checked.steps_per_epoch
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert [(st["epoch"], st["step"]) for st in states] == \
        [(0, i + 1) for i in range(len(got) - 1)] + [(1, 0)]


def test_layout_dtype_and_imagenet_preset(shards):
    loader = make_loader(shards, batch_size=8, streams=("uniform", "minority"), preset="imagenet",
                         image_size=24, dtype=torch.bfloat16, channels_last=True)
    step = next(iter(loader))
    for b in step.values():
        assert b.images.shape == (8, 3, 24, 24) and b.images.dtype == torch.bfloat16
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        assert b.labels.dtype == b.index.dtype == torch.int64
    half = make_loader(shards, batch_size=8, streams=("uniform",), dtype=torch.float16)
    img = next(iter(half))["uniform"].images
    assert img.dtype == torch.float16 and img.is_contiguous() and img.shape == (8, 3, 32, 32)
    # ImageNet normalization: a [0, 255] pixel maps into [-mean/std, (1-mean)/std]
    assert -2.2 < img.float().min() and img.float().max() < 2.7


def test_cpu_decode_names_loader_streams_and_keeps_the_samples(shards):
    """cpu_decode moves a stream's decode to CPU operators; on "cpu" every stream decodes there,
    so the batches must be exactly the default loader's (the option changes speed, not samples)."""
    with pytest.raises(ValueError, match=r"cpu_decode: \['balanced'\] are not among"):
        make_loader(shards, batch_size=8, streams=("uniform", "minority"), cpu_decode="balanced")
    kwargs = dict(batch_size=8, streams=("uniform", "minority"), seed=3)
    plain = next(iter(make_loader(shards, **kwargs)))
    moved = next(iter(make_loader(shards, cpu_decode=("minority",), **kwargs)))
    for name in kwargs["streams"]:
        assert torch.equal(plain[name].images, moved[name].images)
        assert torch.equal(plain[name].index, moved[name].index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_decoded_stream_reaches_the_gpu(shards):
    torch.cuda.init()  # DALI's Python workers are then spawned, as in training
    loader = make_loader(shards, batch_size=8, streams=("uniform", "minority"), device="cuda",
                         preset="imagenet", image_size=24, dtype=torch.float16,
                         channels_last=True, cpu_decode=("minority",))
    step = next(iter(loader))
    for b in step.values():
        assert b.images.is_cuda and b.images.shape == (8, 3, 24, 24)
        assert -2.2 < b.images.float().min() and b.images.float().max() < 2.7
