"""``ltpipe inspect``: summarise, verify and plot a shard directory (contract: shards/format.py).

Many/Medium/Few are the class groups of train/METHODS.md (n > 100, 20..100, n < 20), set by each
class's train count in every split.
"""

from __future__ import annotations

import itertools
import os
import tarfile
from pathlib import Path

import numpy as np

from ltpipe.shards.bounded import parse_json
from ltpipe.shards.format import (INDEX, MANIFEST, MEMBERS, REJECTED, SPLITS, Manifest,
                                  ShardFormatError, decode_sample_id, key_of, payload_max_bytes)
from ltpipe.shards.shardscan import MEMBER_JSON_MAX_BYTES
from ltpipe.shards.text import printable
from ltpipe.shards.longtail import GROUPS, group_of, group_sizes
from ltpipe.shards.tario import MemberSpan, dali_index_text, file_sha256

LIST_ALL_UP_TO = 40  # classes; above that the per-class table shows head and tail only


def summary_lines(m: Manifest) -> list[str]:
    raw = m.raw
    lines = [f"{printable(m.root)}: source {printable(m.source)}, {m.num_classes} classes, "
             f"format {m.format_version}"]
    if raw.get("command"):
        lines.append(f"command: {printable(raw['command'])}")
    # a class's group is set by its TRAIN count in every split, as in the trainer's report
    train = np.array(m.split("train").class_counts)
    for name, split in m.splits.items():
        counts = np.array(split.class_counts)
        sizes = np.array([s.bytes for s in split.shards] or [0])
        present = counts[counts > 0]
        lo = int(present.min()) if len(present) else 0
        line = (f"{name}: {split.num_samples} images in {len(split.shards)} shard(s), "
                f"{sizes.sum() / 1e6:.1f} MB; per class {counts.max()}..{lo} "
                f"(imbalance {counts.max() / max(lo, 1):.1f}); ")
        if name == "train":
            g = group_sizes(train.tolist())
            line += f"many/medium/few classes {g['many']}/{g['medium']}/{g['few']}"
        else:
            per = images_per_group(train, counts)
            line += (f"images of many/medium/few (train) classes "
                     f"{per['many']}/{per['medium']}/{per['few']}")
        lines.append(line)
        lines.append(f"  shard MB min/mean/max {sizes.min() / 1e6:.2f}/{sizes.mean() / 1e6:.2f}/"
                     f"{sizes.max() / 1e6:.2f}")
        stats = m.image_stats(name)
        if stats:
            w, h, b = stats["width"], stats["height"], stats["jpeg_bytes"]
            lines.append(f"  images {w['min']}..{w['max']} x {h['min']}..{h['max']} px "
                         f"(mean {w['mean']:.0f} x {h['mean']:.0f}), "
                         f"JPEG {b['mean'] / 1e3:.1f} KB mean")
        elif "image_stats" in raw["splits"][name]:  # informative: not worth refusing the output
            lines.append(f"  images: unknown (splits.{name}.image_stats in {MANIFEST} is "
                         f"malformed)")
    lines += _class_table(m)
    rejected = m.rejected
    if rejected is None:
        lines.append(f"rejected: unknown (totals.rejected in {MANIFEST} is missing or not a "
                     f"count)")
    else:
        lines.append(f"rejected: {rejected}"
                     + (f" (see {printable(m.root / REJECTED)})" if rejected else ""))
    return lines


def images_per_group(train_counts: np.ndarray, counts: np.ndarray) -> dict[str, int]:
    """Images of ``counts`` (one split, [C]) in each group, the groups set by ``train_counts``."""
    out = dict.fromkeys(GROUPS, 0)
    for n_train, n in zip(train_counts.tolist(), counts.tolist()):
        out[group_of(int(n_train))] += int(n)
    return out


def _class_table(m: Manifest) -> list[str]:
    names = list(m.splits)
    rows = [f"  {'class':<24} " + " ".join(f"{n:>8}" for n in names)]
    ks = list(range(m.num_classes))
    if len(ks) > LIST_ALL_UP_TO:
        ks = ks[:10] + [-1] + ks[-10:]
    for k in ks:
        if k < 0:
            rows.append("  ...")
            continue
        counts = " ".join(f"{m.splits[n].class_counts[k]:>8}" for n in names)
        rows.append(f"  {printable(m.classes[k])[:24]:<24} {counts}")
    return rows


def verify(m: Manifest, progress: bool = True) -> list[str]:
    """Re-read every shard: checksums, member order and ids, index.npy offsets and labels,
    .idx contents, that every JPEG decodes, and each split's class_counts recounted from the
    .cls members and from index.npy. Returns the problems found (empty = OK)."""
    from tqdm import tqdm

    problems: list[str] = []
    total = sum(s.num_samples for s in m.splits.values())
    # disable=None: a bar on a terminal only, so logs and captured stderr stay clean
    with tqdm(total=total, desc="verify", unit="img", disable=None if progress else True,
              leave=False) as bar:
        for split, info in m.splits.items():
            try:
                index = m.index(split)
            except ShardFormatError as exc:  # missing, unreadable or the wrong shape
                problems.append(str(exc))
                index = None
            labels: list[int] = []  # the .cls members, in sample id order
            next_id = 0
            for number, (shard, path) in enumerate(zip(info.shards, m.shard_paths(split))):
                if not path.is_file():
                    problems.append(f"{path}: missing")
                    next_id += shard.samples
                    continue
                if file_sha256(path) != shard.sha256:
                    problems.append(f"{path}: sha256 differs from the manifest")
                try:
                    problems += _verify_shard(m, path, number, next_id, shard.samples, index,
                                              labels)
                except (tarfile.TarError, OSError) as exc:  # cut off or not a tar at all
                    problems.append(f"{path}: unreadable tar ({exc})")
                next_id += shard.samples
                bar.update(shard.samples)
            problems += _verify_counts(m, split, labels, index)
    return problems + _unlisted_shards(m)


def _unlisted_shards(m: Manifest) -> list[str]:
    """Tars in a split folder that the manifest does not list (a split or shard removed from
    it): the writer leaves none, and --verify cannot vouch for them."""
    listed = {path for split in m.splits for path in m.shard_paths(split)}
    return [f"{path}: not listed in {m.root / MANIFEST}, not verified" for split in SPLITS
            for path in sorted((m.root / split).glob("*.tar")) if path not in listed]


def _verify_counts(m: Manifest, split: str, labels: list[int], index) -> list[str]:
    """The manifest's class_counts against the .cls members and index.npy's labels."""
    field = f"{m.root / MANIFEST}: splits.{split}.class_counts"
    claimed = np.asarray(m.split(split).class_counts)
    if len(claimed) != m.num_classes:
        return [f"{field} has {len(claimed)} entries for {m.num_classes} classes"]
    problems = []
    sources = [(f"{split} .cls members", np.asarray(labels, dtype=np.int64))]
    if index is not None:
        sources.append((f"{m.root / split / INDEX} labels",
                        np.asarray(index["label"], dtype=np.int64)))
    for what, values in sources:
        bad = (values < 0) | (values >= m.num_classes)
        if bad.any():
            problems.append(f"{what}: label {values[bad][0]} is not a class "
                            f"(0..{m.num_classes - 1})")
            continue
        counted = np.bincount(values, minlength=m.num_classes)
        wrong = np.flatnonzero(counted != claimed)
        if len(wrong):
            k = int(wrong[0])
            problems.append(f"{field}[{k}] is {claimed[k]}, the {what} count {counted[k]} "
                            f"({len(wrong)} class(es) differ)")
    return problems


def _verify_shard(m: Manifest, path: Path, number: int, first_id: int, samples: int,
                  index: np.ndarray | None, labels: list[int]) -> list[str]:
    """Problems of one shard; appends each sample's .cls label to ``labels``. Members that are
    not regular files (links, devices) or larger than any sample's are reported, never read."""
    from ltpipe.shards.jpegscan import sample_problem  # imports PIL

    problems, spans = [], []
    limits = {"cls": 10, "id": 8, "jpg": payload_max_bytes(m.max_pixels),
              "json": MEMBER_JSON_MAX_BYTES}
    with open(path, "rb") as f, tarfile.open(fileobj=f) as tf:
        members = list(itertools.islice(tf, samples * len(MEMBERS) + 1))  # no more headers
        expected = samples * len(MEMBERS)
        if len(members) != expected:
            found = f"more than {expected}" if len(members) > expected else len(members)
            return [f"{path}: {found} members, expected {expected}"]
        for i in range(samples):
            sid = first_id + i
            group = members[i * len(MEMBERS):(i + 1) * len(MEMBERS)]
            want = [f"{key_of(sid)}.{ext}" for ext in MEMBERS]
            if [g.name for g in group] != want:
                problems.append(f"{path}: sample {sid} members {[g.name for g in group]}")
                continue
            odd = next((g for g, ext in zip(group, MEMBERS)
                        if not g.isfile() or g.size > limits[ext]), None)
            if odd is not None:
                what = "not a regular file" if not odd.isfile() else f"{odd.size:,} bytes"
                problems.append(f"{path}: member {odd.name} is {what}")
                continue
            spans.append([MemberSpan(ext, g.offset_data, g.size, g.name)
                          for ext, g in zip(MEMBERS, group)])
            data = {ext: tf.extractfile(g).read() for ext, g in zip(MEMBERS, group)}
            label = _parse_cls(data["cls"])
            if label is None:
                problems.append(f"{path}: sample {sid} .cls is not a class number")
            else:
                labels.append(label)
                problems += _check_class_name(m, path, sid, label, data["json"])
            if index is not None:
                problems += _check_row(path, number, sid, group, data, label, index)
            # the trainer's pre-scan, uncached: header walk, end, strict decode (jpegscan.py)
            problem = sample_problem(data["jpg"], m.max_pixels)
            if problem:
                problems.append(f"{path}: sample {sid} ({key_of(sid)}): {problem}")
    idx = path.with_suffix(".idx")
    if not idx.is_file() or idx.read_text(errors="replace") != dali_index_text(spans):
        problems.append(f"{idx}: missing or does not match the tar")
    return problems


def _check_class_name(m: Manifest, path: Path, sid: int, label: int, meta: bytes) -> list[str]:
    """The sample's .json names the class the manifest lists for its label."""
    try:
        name = parse_json(meta, f"{path}: sample {sid} .json")["class"]
    except (ValueError, TypeError, KeyError) as exc:
        return [f"{path}: sample {sid} .json is unreadable ({exc})"]
    listed = m.classes[label] if 0 <= label < m.num_classes else None
    if name != listed:
        return [f"{m.root / MANIFEST}: class {label} is named {listed!r}, sample {sid} of "
                f"{path.name} says {name!r}"]
    return []


def _parse_cls(data: bytes) -> int | None:
    text = data.decode("ascii", errors="replace")
    return int(text) if text.isdigit() and len(text) <= 10 else None


def _check_row(path, number, sid, group, data, label, index) -> list[str]:
    """The sample's index.npy row points at its .jpg and agrees with its .id and .cls."""
    if sid >= len(index):
        return [f"{path}: sample {sid} has no index.npy row"]
    row, jpg, problems = index[sid], group[MEMBERS.index("jpg")], []
    if (row["shard"], row["offset"], row["size"]) != (number, jpg.offset_data, jpg.size):
        problems.append(f"{path}: index.npy row {sid} does not point at its .jpg")
    if decode_sample_id(data["id"]) != sid or label != row["label"]:
        problems.append(f"{path}: sample {sid} .id/.cls disagree with index.npy")
    return problems


def plot_counts(m: Manifest, out: str | Path, split: str = "train") -> Path:
    """Sorted class-count histogram on a log scale, with the Many/Few thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts = np.sort(np.array(m.split(split).class_counts))[::-1]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(len(counts)), np.maximum(counts, 0.8), width=1.0, color="tab:blue")
    ax.set_yscale("log")
    for y, label in ((100, "many > 100"), (20, "few < 20")):
        ax.axhline(y, color="tab:red", lw=0.8, ls="--")
        ax.text(len(counts) - 1, y * 1.08, label, ha="right", fontsize=8, color="tab:red")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # classes are whole numbers
    ax.set_xlabel("class (sorted by count)")
    ax.set_ylabel(f"{split} images")
    ax.set_title(f"{m.source}: {len(counts)} classes, {int(counts.sum())} {split} images")
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")  # whole or absent, as preview's grid
    try:  # a PNG whatever the name's suffix: the file is checked and documented as one
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
