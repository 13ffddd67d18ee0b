"""SOURCE strings of ``ltpipe shard`` -> a plan: class names and, per split, the items to write.

Forms: ``synthetic``, ``imagefolder:PATH``, ``list:FILE[:ROOT]`` (+ val_list),
``inat:JSON[:ROOT]`` (+ val_json), ``cifar10:DIR``, ``cifar100:DIR``, ``shards:DIR`` (another
ltpipe shard directory: its classes, splits and source paths, e.g. rewritten with a smaller
``--max-size``, which makes decoding cheaper, or subsampled with ``--imbalance``). Planning is
cheap (no image is decoded); unknown labels found here go to rejected.tsv (missing files when
read). ``imbalance`` subsamples the train split to the exponential profile of METHODS.md, Class
groups (first n_k per class).
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltpipe.shards import cifar, labelled, synthetic
from ltpipe.shards.bounded import parse_json
from ltpipe.shards.encode import Item, Rejected, identity, read_file, too_large
from ltpipe.shards.errors import ShardInputError
from ltpipe.shards.format import INDEX, ShardFormatError, load_manifest
from ltpipe.shards.longtail import longtail_subset
from ltpipe.shards.tario import read_dali_index

IMAGE_EXTS = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
              ".pgm"}
MEMBER_JSON_MAX_BYTES = 64 << 10  # a sample's .json member: its source path and class name
SCHEMES = ("synthetic", "imagefolder", "list", "inat", "cifar10", "cifar100", "shards")


@dataclass
class SourcePlan:
    classes: list[str]
    splits: dict[str, list[Item]]  # in source order; the writer shuffles
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    candidates: dict[str, list[int]] = field(default_factory=dict)  # split -> inputs per class
    class_ids: list | None = None  # the source's own label of each class (list:, inat:)


def plan_source(source: str, *, imbalance: float | None = None,
                val_list: str | None = None, val_json: str | None = None,
                size: str = "default", classes: int | None = None,
                max_per_class: int | None = None, image_size: int | None = None,
                seed: int = 0, allow_outside_root: bool = False,
                val_per_class: int | None = None, out: Path | None = None) -> SourcePlan:
    """The plan of ``source``; ``out``: the OUT it will be written to (None: a dry run)."""
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
    if val_per_class is not None and scheme != "imagefolder":
        raise ShardInputError("--val-per-class only applies to an imagefolder: SOURCE")
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
    class_ids = None
    if scheme == "imagefolder":  # the one source that lists folders: list:/inat: name files
        if out is not None:
            refuse_out_inside(out, Path(rest))
        plan = _imagefolder(Path(rest))
        plan = (plan[0], *linked_duplicates(plan[1], plan[2]))
        if val_per_class is not None:
            plan = (plan[0], hold_out(plan[1], plan[0], val_per_class, seed, rest), plan[2])
    elif scheme in ("list", "inat"):
        read = labelled.image_list if scheme == "list" else labelled.inat
        names, class_ids, splits, rejected = read(rest, val_list if scheme == "list" else val_json,
                                                  allow_outside_root)
        plan = (names, *linked_duplicates(splits, rejected))
    elif scheme == "shards":
        plan, class_ids = _shard_dir(Path(rest))
    else:
        names, splits = cifar.load(Path(rest), scheme)
        plan = (names, {s: [Item(p, k, identity, px) for p, k, px in rows]
                        for s, rows in splits.items()}, [])
    result = _finish(*plan, imbalance)
    result.class_ids = class_ids
    return result


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


def linked_duplicates(splits: dict[str, list[Item]], rejected: list):
    """(splits, rejected) without second names of one file: two paths that reach the same file
    (a hard link, or a symlink) hold one image, so a later one is rejected, as a duplicate in
    its split or, in val, as a leak of a train image into the evaluation. Files are told apart
    by device and inode (following symlinks); a copy of an image under another name is not
    found. Missing files are left to be rejected when read."""
    seen: dict[tuple[int, int], tuple[str, str]] = {}
    out = {}
    for split in sorted(splits, key=lambda s: s != "train"):  # train first
        kept = []
        for it in splits[split]:
            try:
                st = os.stat(it.arg) if it.load is read_file else None
            except (OSError, ValueError):
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                kept.append(it)
                continue
            first = seen.setdefault((st.st_dev, st.st_ino), (split, it.path))
            if first == (split, it.path):
                kept.append(it)
            elif first[0] != split:
                rejected.append((it.path, f"the same file as {first[1]} (a link), which is in the "
                                          f"{first[0]} split"))
            else:
                rejected.append((it.path, f"the same file as {first[1]} (a link): a duplicate"))
        out[split] = kept
    return {s: out[s] for s in splits}, rejected


def hold_out(splits: dict[str, list[Item]], classes: list[str], per_class: int, seed: int,
             where: str) -> dict[str, list[Item]]:
    """Move ``per_class`` train items of every class to a new, balanced val split: a seeded
    choice per class (the same for a given seed), order kept. Every class keeps a train image."""
    if "val" in splits:
        raise ShardInputError(f"imagefolder {where}: has a val folder already; "
                              f"--val-per-class makes one from train")
    by_class: dict[int, list[int]] = {}
    for i, it in enumerate(splits["train"]):
        by_class.setdefault(it.label, []).append(i)
    chosen = set()
    for k, positions in sorted(by_class.items()):
        if len(positions) <= per_class:
            raise ShardInputError(f"--val-per-class {per_class}: class {classes[k]!r} has "
                                  f"{len(positions)} images (it needs {per_class + 1})")
        rng = np.random.default_rng([seed, 0x7A1, k])
        chosen.update(positions[j] for j in rng.choice(len(positions), per_class, replace=False))
    train = splits["train"]
    return {"train": [it for i, it in enumerate(train) if i not in chosen],
            "val": [it for i, it in enumerate(train) if i in chosen]}


def refuse_out_inside(out: Path, folder: Path) -> None:
    """OUT must lie outside a folder the source lists to find its inputs: the next run would
    read it back (imagefolder: OUT became a class, and every later class's label shifted).
    Paths are compared as written and with symlinks resolved, so neither a link to the folder
    nor a link inside it (which the scan follows) hides OUT."""
    targets = {Path(os.path.abspath(out)), Path(os.path.realpath(out))}
    bases = {Path(os.path.abspath(folder)), Path(os.path.realpath(folder))}
    if any(t == b or b in t.parents for t in targets for b in bases):
        raise ShardInputError(f"OUT {out}: inside the SOURCE folder {folder}, where the next "
                              f"run would read it as input; choose an OUT outside it")


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ShardInputError(f"{what} {path}: no such file or directory")
    return path


def _imagefolder(root: Path):
    """PATH/CLASS/*.jpg, or PATH/train/CLASS/* plus optional PATH/val/CLASS/*. What is not read
    goes to rejected.tsv, never skipped silently: files outside a class folder, files without an
    image extension, and (train/val layout) PATH's other entries, one row each. A train class
    folder without images is refused: a class with no training image breaks the long-tail
    losses and samplers."""
    _existing(root, "imagefolder")
    if not root.is_dir():
        raise ShardInputError(f"imagefolder {root}: not a directory")
    if not labelled.is_unicode(str(root)):
        raise ShardInputError(f"imagefolder {labelled.shown(str(root))}: the path is not UTF-8")
    rejected = []
    if (root / "train").is_dir():
        split_roots = {"train": root / "train", "val": root / "val"}
        val = split_roots["val"]
        if (val.exists() or val.is_symlink()) and not val.is_dir():  # the user meant a val split
            raise ShardInputError(f"imagefolder {val}: not a directory (a val split is "
                                  f"{val}/CLASS/*)")
        rejected += [(str(p), "not read: only train/ and val/ are read in this layout")
                     for p in sorted(root.iterdir()) if p.name not in split_roots]
    else:
        split_roots = {"train": root}
    # a folder name that is not UTF-8 cannot be a class name (manifest.json is UTF-8)
    classes = class_folders([d.name for d in split_roots["train"].iterdir()
                             if d.is_dir() and labelled.is_unicode(d.name)],
                            split_roots["train"])
    if not classes:
        raise ShardInputError(f"imagefolder {split_roots['train']}: no class folders")
    index = {c: k for k, c in enumerate(classes)}
    splits = {}
    for split, base in split_roots.items():
        if not base.is_dir():
            continue
        items = []
        entries = sorted(base.iterdir())
        folders = [d for d in entries if d.is_dir()]
        rejected += [(str(f), "not read: not in a class folder") for f in entries
                     if not f.is_dir()]
        class_folders([d.name for d in folders if labelled.is_unicode(d.name)], base)
        for class_dir in folders:
            files, others = _class_files(class_dir)
            rejected += [(str(f), f"not read: not an image extension ({f.suffix or 'none'})")
                         for f in others]
            if not labelled.is_unicode(class_dir.name):
                rejected += [(str(f), "class folder name is not UTF-8") for f in files]
                continue
            name = unicodedata.normalize("NFC", class_dir.name)
            if name not in index:
                rejected += [(str(f), f"unknown label {class_dir.name!r}") for f in files]
                continue
            kept = []
            for f in files:
                if labelled.is_unicode(str(f)):
                    kept.append(Item(str(f), index[name], read_file, str(f)))
                else:
                    rejected.append((str(f), "file name is not UTF-8"))
            if split == "train" and not kept:
                what = "no image whose name is UTF-8" if files else "no images"
                raise ShardInputError(f"imagefolder {class_dir}: {what}; class {name!r} would "
                                      f"have no training image (add some or remove the folder)")
            items += kept
        splits[split] = items
    return classes, splits, rejected


def _class_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """(files named as images, other files) in a class folder and its subfolders, sorted."""
    entries = sorted(class_dir.rglob("*"))
    images = [f for f in entries if f.suffix.lower() in IMAGE_EXTS]
    others = [f for f in entries if f.suffix.lower() not in IMAGE_EXTS and not f.is_dir()]
    return images, others


def class_folders(names: list[str], where: Path) -> list[str]:
    """The class names of these folders, sorted: each name in Unicode's composed form (NFC), so
    ``café`` typed on Linux and the same name from macOS (decomposed, NFD) are one class, also
    across the train and val folders. Two folders of one split that differ only in that form
    would be two classes that look the same: refused."""
    by_form: dict[str, str] = {}
    for name in sorted(names):
        form = unicodedata.normalize("NFC", name)
        if form in by_form:
            raise ShardInputError(f"imagefolder {where}: class folders {by_form[form]!r} and "
                                  f"{name!r} differ only in Unicode normalisation (NFC/NFD); "
                                  f"merge or rename one")
        by_form[form] = name
    return sorted(by_form)


def read_span(span: tuple[str, int, int], max_bytes: int | None = None) -> bytes:
    """``size`` bytes at ``offset`` of ``path``: one payload of a shard tar (at most
    ``max_bytes``)."""
    path, offset, size = span
    if max_bytes is not None and size > max_bytes:
        raise Rejected(too_large(size, max_bytes))
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
    return (list(manifest.classes), splits, []), manifest.raw.get("class_ids")


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
                span = by_ext["json"]
                f.seek(span.offset)
                try:
                    if not 0 < span.size <= MEMBER_JSON_MAX_BYTES:
                        raise ValueError("size")
                    meta = parse_json(f.read(span.size), span.name)
                    paths[shard, by_ext["jpg"].offset] = str(meta["path"])
                except (ValueError, KeyError, TypeError):
                    raise ShardFormatError(
                        f"{tar}: unreadable .json member of {by_ext['json'].name}") from None
    return paths
