"""SOURCE strings of ``ltpipe shard`` -> a plan: class names and, per split, the items to write.

Forms: ``synthetic``, ``imagefolder:PATH``, ``list:FILE[:ROOT]`` (+ val_list),
``inat:JSON[:ROOT]`` (+ val_json), ``cifar10:DIR``, ``cifar100:DIR``, ``shards:DIR`` (another
ltpipe shard directory: its classes, splits and source paths, e.g. rewritten with a smaller
``--max-size``, which makes decoding cheaper, or subsampled with ``--imbalance``). Planning is
cheap (no image is decoded); unknown labels found here go to rejected.tsv (missing files when
read). ``imbalance`` subsamples the train split to the exponential profile of ALGORITHMS.md §5
(first n_k per class).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ltpipe.shards import cifar, synthetic
from ltpipe.shards.encode import Item, Rejected, identity, read_file
from ltpipe.shards.errors import ShardInputError
from ltpipe.shards.format import INDEX, ShardFormatError, load_manifest
from ltpipe.shards.longtail import longtail_subset
from ltpipe.shards.tario import read_dali_index

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SCHEMES = ("synthetic", "imagefolder", "list", "inat", "cifar10", "cifar100", "shards")


@dataclass
class SourcePlan:
    classes: list[str]
    splits: dict[str, list[Item]]  # in source order; the writer shuffles
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    candidates: dict[str, list[int]] = field(default_factory=dict)  # split -> inputs per class


def plan_source(source: str, *, imbalance: float | None = None,
                val_list: str | None = None, val_json: str | None = None,
                size: str = "default", classes: int | None = None,
                max_per_class: int | None = None, image_size: int | None = None,
                seed: int = 0) -> SourcePlan:
    scheme, _, rest = source.partition(":")
    if scheme not in SCHEMES:
        forms = ", ".join(s + ":" for s in SCHEMES[1:])
        raise ShardInputError(f"SOURCE {source!r}: unknown scheme {scheme!r} "
                              f"(use one of {forms} or synthetic)")
    if scheme != "synthetic" and (classes, max_per_class, image_size) != (None, None, None):
        raise ShardInputError("--classes/--max-per-class/--image-size only apply to synthetic")
    if val_list is not None and scheme != "list":
        raise ShardInputError("--val-list only applies to a list: SOURCE")
    if val_json is not None and scheme != "inat":
        raise ShardInputError("--val-json only applies to an inat: SOURCE")
    if scheme == "synthetic":
        if rest:
            raise ShardInputError(f"SOURCE {source!r}: synthetic takes no path")
        try:
            spec = synthetic.make_spec(size, classes=classes, imbalance=imbalance,
                                       max_per_class=max_per_class, image_size=image_size,
                                       seed=seed)
        except ValueError as exc:
            raise ShardInputError(str(exc)) from None
        return _finish(synthetic.class_names(spec), {
            split: [Item(p, k, synthetic.render, arg) for p, k, arg in triples]
            for split, triples in synthetic.synthetic_items(spec).items()}, [], None)
    if not rest:
        raise ShardInputError(f"SOURCE {source!r}: missing path after '{scheme}:'")
    if scheme == "imagefolder":
        plan = _imagefolder(Path(rest))
    elif scheme == "list":
        plan = _image_list(rest, val_list)
    elif scheme == "inat":
        plan = _inat(rest, val_json)
    elif scheme == "shards":
        plan = _shard_dir(Path(rest))
    else:
        names, splits = cifar.load(Path(rest), scheme)
        plan = (names, {s: [Item(p, k, identity, px) for p, k, px in rows]
                        for s, rows in splits.items()}, [])
    return _finish(*plan, imbalance)


def _finish(classes, splits, rejected, imbalance) -> SourcePlan:
    if not splits.get("train"):
        raise ShardInputError("SOURCE has no training images")
    if imbalance is not None:
        train = splits["train"]
        keep = longtail_subset([it.label for it in train], len(classes), imbalance)
        splits["train"] = [train[i] for i in keep]
    candidates = {}
    for name, items in splits.items():
        counts = [0] * len(classes)
        for it in items:
            counts[it.label] += 1
        candidates[name] = counts
    return SourcePlan(list(classes), splits, rejected, candidates)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ShardInputError(f"{what} {path}: no such file or directory")
    return path


def _imagefolder(root: Path):
    """PATH/CLASS/*.jpg, or PATH/train/CLASS/* plus optional PATH/val/CLASS/*."""
    _existing(root, "imagefolder")
    if not root.is_dir():
        raise ShardInputError(f"imagefolder {root}: not a directory")
    split_roots = {"train": root / "train", "val": root / "val"} if (root / "train").is_dir() \
        else {"train": root}
    classes = sorted(d.name for d in split_roots["train"].iterdir() if d.is_dir())
    if not classes:
        raise ShardInputError(f"imagefolder {split_roots['train']}: no class folders")
    index = {c: k for k, c in enumerate(classes)}
    splits, rejected = {}, []
    for split, base in split_roots.items():
        if not base.is_dir():
            continue
        items = []
        for class_dir in sorted(d for d in base.iterdir() if d.is_dir()):
            files = sorted(f for f in class_dir.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
            if class_dir.name not in index:
                rejected += [(str(f), f"unknown label {class_dir.name!r}") for f in files]
                continue
            items += [Item(str(f), index[class_dir.name], read_file, str(f)) for f in files]
        splits[split] = items
    return classes, splits, rejected


def _read_pairs(list_file: Path, root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Lines ``relative/path label``; returns ((abs path, label) pairs, rejected)."""
    pairs, rejected = [], []
    for number, line in enumerate(_existing(list_file, "list").read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ShardInputError(f"{list_file}:{number}: expected 'relative/path label'")
        path = str(root / fields[0].strip())
        try:
            label = int(fields[1])
            if label < 0:
                raise ValueError
        except ValueError:
            rejected.append((path, f"unknown label {fields[1]!r}"))
            continue
        pairs.append((path, label))
    return pairs, rejected


def _image_list(spec: str, val_list: str | None):
    file, _, root = spec.partition(":")
    list_file = Path(file)
    base = Path(root) if root else list_file.parent
    _existing(base, "list ROOT")
    train, rejected = _read_pairs(list_file, base)
    val, val_rejected = _read_pairs(Path(val_list), base) if val_list else ([], [])
    num_classes = max((label for _, label in train), default=-1) + 1
    width = len(str(max(num_classes - 1, 0)))
    classes = [f"{k:0{width}d}" for k in range(num_classes)]
    splits = {"train": train, "val": val} if val_list else {"train": train}
    rejected += val_rejected
    out = {}
    for split, pairs in splits.items():
        items = []
        for path, label in pairs:  # missing files are rejected when read
            if label >= num_classes:
                rejected.append((path, f"unknown label {label}"))
            else:
                items.append(Item(path, label, read_file, path))
        out[split] = items
    return classes, out, rejected


def _inat_split(json_file: Path, root: Path, category_index: dict | None):
    """Items of one COCO-style json; the train json defines the categories."""
    try:
        doc = json.loads(_existing(json_file, "inat").read_text())
        images = {im["id"]: im["file_name"] for im in doc["images"]}
        labels = {a["image_id"]: a["category_id"] for a in doc.get("annotations", [])}
        cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardInputError(f"{json_file}: not an iNaturalist/COCO json ({exc!r})") from None
    if category_index is None:
        if not cats:
            raise ShardInputError(f"{json_file}: no categories")
        category_index = {c["id"]: k for k, c in enumerate(cats)}
        names = [str(c.get("name", c["id"])) for c in cats]
    else:
        names = None
    items, rejected = [], []
    for image_id, name in images.items():
        path = str(root / name)
        cat = labels.get(image_id)
        if cat not in category_index:
            rejected.append((path, f"unknown label {cat!r}"))
        else:  # missing files are rejected when read
            items.append(Item(path, category_index[cat], read_file, path))
    return names, category_index, items, rejected


def _inat(spec: str, val_json: str | None):
    file, _, root = spec.partition(":")
    base = Path(root) if root else Path(file).parent
    _existing(base, "inat ROOT")
    names, cat_index, train, rejected = _inat_split(Path(file), base, None)
    splits = {"train": train}
    if val_json:
        _, _, splits["val"], val_rejected = _inat_split(Path(val_json), base, cat_index)
        rejected += val_rejected
    return names, splits, rejected


def read_span(span: tuple[str, int, int]) -> bytes:
    """``size`` bytes at ``offset`` of ``path``: one payload of a shard tar."""
    path, offset, size = span
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as exc:
        raise Rejected(f"unreadable shard ({exc.strerror or exc})") from None
    if len(data) != size:
        raise Rejected(f"truncated shard (payload ends past {path})")
    return data


def _shard_dir(root: Path):
    """A finished ltpipe shard directory; each item keeps its original source path (read from
    the samples' .json members through the DALI indexes) and reads its .jpg by offset."""
    try:
        manifest = load_manifest(root)
        splits = {}
        for split in manifest.splits:
            rows = manifest.index(split)
            tars = [str(t) for t in manifest.shard_paths(split)]
            for tar, info in zip(tars, manifest.split(split).shards):
                # a cut-off or rewritten tar; `ltpipe inspect DIR --verify` checks every byte
                if Path(tar).stat().st_size != info.bytes:
                    raise ShardFormatError(f"{tar}: {Path(tar).stat().st_size} bytes, its "
                                           f"manifest says {info.bytes}")
            paths = _source_paths(tars, manifest.dali_index_paths(split))
            items = []
            for i, (shard, offset, size, label) in enumerate(rows.tolist()):
                if (shard, offset) not in paths:
                    raise ShardFormatError(f"{root / split / INDEX}: sample {i} is not in the "
                                           f"DALI index of {tars[shard]}")
                items.append(Item(paths[shard, offset], label, read_span,
                                  (tars[shard], offset, size)))
            splits[split] = items
    except (ShardFormatError, OSError) as exc:
        raise ShardInputError(str(exc)) from None  # it names the file
    return list(manifest.classes), splits, []


def _source_paths(tars: list[str], indexes: list[Path]) -> dict[tuple[int, int], str]:
    """(shard, .jpg offset) -> the "path" of the sample's .json member."""
    paths = {}
    for shard, (tar, idx) in enumerate(zip(tars, indexes)):
        try:
            samples = read_dali_index(idx)
        except ValueError as exc:
            raise ShardFormatError(str(exc)) from None
        with open(tar, "rb") as f:
            for spans in samples:
                by_ext = {sp.ext: sp for sp in spans}
                if "jpg" not in by_ext or "json" not in by_ext:
                    raise ShardFormatError(f"{idx}: a sample without .jpg/.json members")
                f.seek(by_ext["json"].offset)
                try:
                    meta = json.loads(f.read(by_ext["json"].size))
                    paths[shard, by_ext["jpg"].offset] = str(meta["path"])
                except (ValueError, KeyError, TypeError):
                    raise ShardFormatError(
                        f"{tar}: unreadable .json member of {by_ext['json'].name}") from None
    return paths
