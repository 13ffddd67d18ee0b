"""Damaged shard directories meet the loaders: refused with one line naming the file, or skipped
and counted when the caller opts in; never a crash or a silently smaller epoch."""

import shutil

import numpy as np
import pytest

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.shardset import open_split
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards.format import ShardFormatError
from ltpipe.shards.write import write_shards

N_TRAIN = 100


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "s"
    write_shards("synthetic", out, classes=6, max_per_class=40, imbalance=10, image_size=32,
                 samples_per_shard=25, seed=0, progress=False)
    return out


def damaged_copy(shards, tmp_path, name="bad"):
    out = tmp_path / name
    shutil.copytree(shards, out)
    return out


def truncate_half(tar):
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.truncate(size // 2)


def ids_of(loader, stream="uniform"):
    return np.concatenate([s[stream].index.numpy() for s in loader])


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_truncated_shard_is_refused_with_one_line(shards, tmp_path, split):
    bad = damaged_copy(shards, tmp_path)
    truncate_half(bad / split / "shard-000001.tar")
    rows = np.load(bad / split / "index.npy")
    size = (bad / split / "shard-000001.tar").stat().st_size
    lost = int(((rows["shard"] == 1) & (rows["offset"] + rows["size"] > size)).sum())
    assert lost > 0
    kw = dict(split=split, batch_size=8, streams=("uniform",))
    for build in (make_loader, lambda s, **k: make_torch_loader(s, num_workers=0, **k)):
        with pytest.raises(ShardFormatError) as err:
            build(bad, **kw)
        msg = str(err.value)
        assert "\n" not in msg
        assert "shard-000001.tar" in msg and f"{lost} corrupt" in msg
        assert "ltpipe inspect --verify" in msg
    with pytest.raises(ShardFormatError):
        open_split(bad, split)


def test_skip_corrupt_reads_the_rest_and_counts_what_it_left_out(shards, tmp_path):
    bad = damaged_copy(shards, tmp_path)
    truncate_half(bad / "train" / "shard-000002.tar")
    data = open_split(bad, "train", skip_corrupt=True)
    assert data.skipped > 0 and np.all(data.rows["shard"][data.bad_ids] == 2)
    want = np.delete(np.arange(N_TRAIN), data.bad_ids)
    loader = make_loader(bad, batch_size=16, streams=("uniform", "minority"), skip_corrupt=True)
    assert loader.skipped == data.skipped
    steps = list(loader)
    assert np.array_equal(np.sort(np.concatenate([s["uniform"].index for s in steps])), want)
    assert not np.isin(np.concatenate([s["minority"].index for s in steps]), data.bad_ids).any()
    ref = make_torch_loader(bad, batch_size=16, streams=("uniform",), num_workers=0,
                            skip_corrupt=True)
    assert ref.skipped == data.skipped and np.array_equal(np.sort(ids_of(ref)), want)


def test_a_sound_split_opens_with_nothing_skipped(shards):
    assert make_loader(shards, batch_size=8, streams=("uniform",)).skipped == 0
