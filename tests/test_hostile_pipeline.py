"""Damaged shard directories meet the loaders: refused with one line naming the file, or skipped
and counted when the caller opts in; never a crash or a silently smaller epoch."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.shardset import open_split
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards import jpegscan, shardscan
from ltpipe.shards.format import ShardFormatError, key_of
from ltpipe.shards.write import write_shards

N_TRAIN = 100


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "s"
    write_shards("synthetic", out, classes=6, max_per_class=40, imbalance=10, image_size=32,
                 samples_per_shard=25, seed=0, progress=False)
    return out


@pytest.fixture(autouse=True)
def own_scan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTPIPE_CACHE", str(tmp_path / "cache"))


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


# ---- damaged JPEG bodies: SOI/EOI intact, bits flipped inside ------------------------------

def segments(jpg: bytes) -> dict[int, list[int]]:
    """Marker -> byte offsets of its segments, up to the scan."""
    found, i = {}, 2
    while jpg[i + 1] != 0xDA:
        found.setdefault(jpg[i + 1], []).append(i)
        i += 2 + int.from_bytes(jpg[i + 2:i + 4], "big")
    return found


def dht_length_flipped(jpg: bytes) -> bytes:
    """One bit of the first Huffman segment's length: DALI's parser loses the marker chain (the
    class that segfaults a batch)."""
    b = bytearray(jpg)
    b[segments(jpg)[0xC4][0] + 2] ^= 0x01
    return bytes(b)


def huffman_code_oversubscribed(jpg: bytes) -> bytes:
    """The first Huffman table keeps its length and symbol count, but claims 3 codes of length
    1: a libjpeg-turbo error ("Bogus Huffman table definition") that stops DALI's pipeline;
    only the full decode sees it."""
    b = bytearray(jpg)
    counts = segments(jpg)[0xC4][0] + 5  # 16 code counts follow the table's class/id byte
    moved = 3 - b[counts]
    donor = next(k for k in range(15, 0, -1) if b[counts + k] >= moved)
    b[counts], b[counts + donor] = 3, b[counts + donor] - moved
    return bytes(b)


def rewrite(root, split, damage: dict[int, callable]):
    rows = np.load(root / split / "index.npy")
    for i, fn in damage.items():
        tar = root / split / f"shard-{int(rows['shard'][i]):06d}.tar"
        with open(tar, "r+b") as f:
            f.seek(int(rows["offset"][i]))
            jpg = f.read(int(rows["size"][i]))
            f.seek(int(rows["offset"][i]))
            f.write(fn(jpg))


def test_the_detector_flags_both_classes_and_passes_sound_images(shards):
    rows = np.load(shards / "train" / "index.npy")
    with open(shards / "train" / "shard-000000.tar", "rb") as f:
        f.seek(int(rows["offset"][0]))
        jpg = f.read(int(rows["size"][0]))
    assert jpegscan.sample_problem(jpg) is None
    assert "header" in jpegscan.sample_problem(dht_length_flipped(jpg))
    over = huffman_code_oversubscribed(jpg)
    assert jpegscan.header_problem(over) is None and "decode" in jpegscan.sample_problem(over)


def test_a_damaged_jpeg_body_is_refused_naming_its_key(shards, tmp_path):
    bad = damaged_copy(shards, tmp_path)
    rewrite(bad, "train", {13: dht_length_flipped})
    with pytest.raises(ShardFormatError) as err:
        make_loader(bad, batch_size=8, streams=("uniform",))
    msg = str(err.value)
    assert "\n" not in msg and "shard-000000.tar (1)" in msg and key_of(13) in msg


ITERATE = textwrap.dedent("""
    import sys
    import numpy as np
    from ltpipe.pipeline.loader import make_loader
    loader = make_loader(sys.argv[1], batch_size=16, streams=("uniform", "minority"), r=0.0,
                         num_threads=2, py_workers=1, skip_corrupt=True)
    ids = np.concatenate([s["uniform"].index.numpy() for s in loader])
    q = np.concatenate([s["minority"].index.numpy() for s in loader])
    print(loader.skipped, " ".join(map(str, sorted(ids))), "|", " ".join(map(str, q)))
""")


def iterate_in_a_child(root, tmp_path):
    """ITERATE over ``root`` in its own process (a decoder crash fails the test, not pytest):
    (samples skipped, P's ids, Q's ids)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", LTPIPE_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-c", ITERATE, str(root)], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    head, q = res.stdout.strip().split("|")
    skipped, *ids = head.split()
    return int(skipped), sorted(map(int, ids)), set(map(int, q.split()))


def test_skip_corrupt_iterates_damaged_bodies_without_crashing(shards, tmp_path):
    """Every 8th sample damaged, in DALI's batches: before the pre-scan the DALI CPU decoder
    died with SIGSEGV here (a child process, so a crash is a failure, not the end of pytest)."""
    bad = damaged_copy(shards, tmp_path)
    damage = {i: dht_length_flipped if i % 16 else huffman_code_oversubscribed
              for i in range(0, N_TRAIN, 8)}
    rewrite(bad, "train", damage)
    skipped, ids, q = iterate_in_a_child(bad, tmp_path)
    assert skipped == len(damage)
    assert ids == sorted(set(range(N_TRAIN)) - set(damage))
    assert not q & set(damage)


def test_damage_in_place_with_the_mtime_restored_never_reaches_dali(shards, tmp_path):
    """The scan's cache was keyed by (path, size, mtime): after the scan, DHT lengths flipped in
    a quarter of the JPEGs and the mtime restored, the stale entry said "sound" and DALI's decoder
    crashed (SIGSEGV, exit 139). Keyed by the bytes, the damaged samples are found again."""
    bad = damaged_copy(shards, tmp_path)
    assert open_split(bad, "train").skipped == 0  # scanned and cached while sound
    before = {tar: tar.stat() for tar in (bad / "train").glob("*.tar")}
    damage = {i: dht_length_flipped for i in range(0, N_TRAIN, 4)}
    rewrite(bad, "train", damage)
    for tar, st in before.items():
        os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (tar.stat().st_size, tar.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    skipped, ids, _ = iterate_in_a_child(bad, tmp_path)
    assert skipped == len(damage)
    assert ids == sorted(set(range(N_TRAIN)) - set(damage))


def test_the_scan_runs_once_per_shard_and_again_when_the_bytes_change(shards, tmp_path,
                                                                      monkeypatch):
    """The cache is keyed by each tar's bytes: a tar damaged in place with its size and mtime
    restored is scanned again (the stale result once let a crashing JPEG through: SIGSEGV)."""
    bad = damaged_copy(shards, tmp_path)
    rewrite(bad, "train", {3: huffman_code_oversubscribed})
    assert open_split(bad, "train", skip_corrupt=True).bad_ids.tolist() == [3]
    calls = []
    real = shardscan.scan_shard
    monkeypatch.setattr(shardscan, "scan_shard", lambda *a: calls.append(a) or real(*a))
    assert open_split(bad, "train", skip_corrupt=True).bad_ids.tolist() == [3]
    assert calls == []  # every shard came from the cache
    tar = bad / "train" / f"shard-{int(np.load(bad / 'train' / 'index.npy')['shard'][50]):06d}.tar"
    before = tar.stat()
    rewrite(bad, "train", {50: dht_length_flipped})
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    assert (tar.stat().st_size, tar.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ShardFormatError, match=key_of(50)):
        open_split(bad, "train")
    assert len(calls) == 1  # only the changed shard was scanned again
    assert open_split(bad, "train", skip_corrupt=True).bad_ids.tolist() == [3, 50]


def test_the_ranks_of_a_node_share_the_scan_and_its_digests(shards, monkeypatch):
    """DDP: each local rank hashes and scans its share of every split's tars, and the ranks
    exchange the digests: opening the splits afterwards neither scans nor hashes any tar again,
    in either process (each rank otherwise reads every tar to look its cache entry up)."""
    from ltpipe.train import build
    from ltpipe.train.dist import DistInfo

    calls, hashed, shares = [], [], {}
    real_scan, real_hash = shardscan.scan_shard, shardscan.sha256_file
    monkeypatch.setattr(shardscan, "scan_shard", lambda *a: calls.append(a[0]) or real_scan(*a))
    monkeypatch.setattr(shardscan, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    monkeypatch.setattr(build, "gather_objects",
                        lambda obj, info: shares.__setitem__(info.rank, obj) or
                        list(shares.values()))
    monkeypatch.setattr(shardscan, "_digests", {})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cpu = torch.device("cpu")
    tars = sorted(str(p.resolve()) for p in shards.glob("*/*.tar"))
    build.scan_once_per_node(shards, DistInfo(rank=1, world=2, local_rank=1, device=cpu))
    first = sorted(map(str, calls))
    assert 0 < len(first) < len(tars) and len(hashed) == len(first)
    shardscan._digests.clear()  # rank 0 is another process: it knows no digest of rank 1's
    build.scan_once_per_node(shards, DistInfo(rank=0, world=2, local_rank=0, device=cpu))
    assert sorted(map(str, calls)) == tars and len(hashed) == len(tars)  # each tar once
    for split in ("train", "val"):
        open_split(shards, split)
    assert len(calls) == len(tars) and len(hashed) == len(tars)  # all from the cache and memo


# ---- manifest counts and DALI indexes that disagree with index.npy --------------------------

@pytest.mark.parametrize("split", ["train", "val"])
def test_edited_class_counts_are_refused_naming_the_field(shards, tmp_path, split):
    """Counts moved between two classes, total kept: the n_k of every loss would be wrong."""
    bad = damaged_copy(shards, tmp_path)
    doc = json.loads((bad / "manifest.json").read_text())
    counts = doc["splits"]["train"]["class_counts"]
    counts[0], counts[-1] = counts[0] - 3, counts[-1] + 3
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardFormatError) as err:  # val reads the train counts too
        make_loader(bad, split=split, batch_size=8, streams=("uniform",))
    msg = str(err.value)
    assert "\n" not in msg and "manifest.json" in msg and "splits.train.class_counts" in msg


@pytest.mark.parametrize("cut", ["line", "mid-line", "garbage"])
def test_a_damaged_dali_index_is_refused_naming_the_file(shards, tmp_path, cut):
    bad = damaged_copy(shards, tmp_path)
    idx = bad / "train" / "shard-000001.idx"
    text = idx.read_bytes()
    lines = text.splitlines(keepends=True)
    if cut == "line":  # whole lines missing, header kept
        idx.write_bytes(b"".join(lines[:len(lines) // 2]))
    elif cut == "mid-line":
        idx.write_bytes(text[:len(text) // 2])
    else:
        idx.write_bytes(b"\xff\xfe" + text[2:])
    for build in (make_loader, lambda s, **k: make_torch_loader(s, num_workers=0, **k)):
        with pytest.raises(ShardFormatError) as err:
            build(bad, batch_size=8, streams=("uniform",))
        assert "\n" not in str(err.value) and str(idx) in str(err.value)


def test_inspect_verify_finds_what_the_trainer_refuses(shards, tmp_path):
    """`ltpipe inspect --verify` runs the same detector (uncached) and names each sample's key."""
    from click.testing import CliRunner

    from ltpipe.train.cli import main

    bad = damaged_copy(shards, tmp_path)
    rewrite(bad, "train", {13: dht_length_flipped, 20: huffman_code_oversubscribed})
    res = CliRunner().invoke(main, ["inspect", str(bad), "--verify"])
    assert res.exit_code != 0
    flagged = [ln for ln in res.output.splitlines() if "shard-000000.tar: sample" in ln]
    assert any(key_of(13) in ln and "header" in ln for ln in flagged), res.output
    assert any(key_of(20) in ln and "decode" in ln for ln in flagged), res.output


@pytest.mark.parametrize("skip", [False, True])
def test_otmix_confusion_loader_follows_skip_corrupt(shards, tmp_path, skip):
    """The loader OTmix opens itself (its confusion split, val) obeys the run's --skip-corrupt."""
    import torch

    from ltpipe.train.mixers.base import MixerEnv
    from ltpipe.train.mixers.otmix import OTMix

    bad = damaged_copy(shards, tmp_path)
    truncate_half(sorted((bad / "val").glob("*.tar"))[0])
    env = MixerEnv(torch.tensor(open_split(shards, "train").class_counts), torch.device("cpu"),
                   32, 8, epochs=4, shards=str(bad), skip_corrupt=skip)
    mixer = OTMix(env)
    if skip:
        loader, _ = mixer._confusion_steps(1)
        assert loader.skipped > 0
    else:
        with pytest.raises(ShardFormatError, match="corrupt"):
            mixer._confusion_steps(1)


def test_preview_refuses_corrupt_samples_or_leaves_them_out_and_says_so(shards, tmp_path):
    from click.testing import CliRunner

    from ltpipe.train.cli import main

    bad = damaged_copy(shards, tmp_path)
    rewrite(bad, "val", {4: dht_length_flipped})
    cmd = ["preview", str(bad), "--mixer", "none", "--split", "val", "--n", "3",
           "--out", str(tmp_path / "p.png")]
    refused = CliRunner().invoke(main, cmd)
    assert refused.exit_code != 0 and "corrupt sample" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "Traceback" not in refused.output
    res = CliRunner().invoke(main, [*cmd, "--skip-corrupt"])
    assert res.exit_code == 0, res.output
    assert "(1 corrupt samples of val left out)" in res.output and (tmp_path / "p.png").is_file()
