"""``list:FILE[:ROOT]`` and ``inat:JSON[:ROOT]``: files that name images and their labels.

Both are read as untrusted text, so that a careless or crafted file cannot change what is written
without it showing in rejected.tsv:

- every image path must stay inside ROOT (the list file's folder when ROOT is not given) after
  ``..`` and absolute paths are resolved, lexically: symlinks inside ROOT are the data owner's
  layout and are followed. Other paths are rejected unless ``allow_outside_root``;
- a path listed again with the same label keeps its first occurrence; a path with two labels
  or in both the train and the val file, an image id given twice and an image with more than one
  annotation are rejected, every occurrence; rejected.tsv says why;
- list labels are integers 0..MAX_LABEL; the labels used are mapped to dense class ids in
  increasing order (the original labels are the manifest's ``class_ids``), so nothing is sized by
  the largest label; a larger label is a one-line error;
- a list file that is not UTF-8, a JSON nested too deeply, and names that are not valid Unicode
  (a lone surrogate) are one-line errors or rejected rows, never tracebacks;
- a json id of the wrong type (a list, object, float or bool; category ids must be integers),
  a category name that is not a non-empty string, and a category id given twice are one-line
  errors naming the field: each would mislabel images or fail deep inside the writer.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from ltpipe.shards.bounded import GIB, ParseError, read_bytes, read_json
from ltpipe.shards.encode import Item, read_file
from ltpipe.shards.errors import ShardInputError

INAT_MAX_BYTES = 4 * GIB  # iNat 2021's train json is about 1 GB
LIST_MAX_BYTES = GIB  # 'path label' lines: iNat's 437K images need about 30 MB
MAX_LABEL = 10**7  # the largest list label accepted (iNat 2021 has 10,000 classes)
LABEL = re.compile(r"[0-9]+")
OUTSIDE = "outside ROOT {root} (--allow-outside-root allows it)"

Pair = tuple[str, object, str]  # (path, label as in the file, where it was given)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ShardInputError(f"{what} {path}: no such file or directory")
    return path


def is_unicode(text: str) -> bool:
    """False for a string with lone surrogates (undecodable file names, JSON "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` printable as UTF-8: the undecodable bytes of a file name as \\xNN, a lone
    surrogate (from a json) as \\udNNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # file names: the bytes on disk
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _checked_path(root: Path, name: str, allow_outside: bool) -> tuple[str, str | None]:
    """(path as written, reason to reject it or None)."""
    path = root / name
    if not is_unicode(str(path)):
        return str(path), "file name is not valid Unicode (UTF-8)"
    if "\0" in name:  # no file can have it: the OS refuses the name, ltpipe rejects it here
        return str(path), "file name contains a NUL byte"
    if not allow_outside:
        base = os.path.normpath(os.path.abspath(root))
        if not os.path.normpath(os.path.abspath(path)).startswith(base.rstrip(os.sep) + os.sep):
            return str(path), OUTSIDE.format(root=root)
    return str(path), None


def _unique(pairs: list[Pair], taken: frozenset | set = frozenset()) -> tuple[list[Pair], list]:
    """A path given twice with one label keeps its first occurrence; with several labels (or
    also in ``taken``, the train split) every occurrence is rejected."""
    labels: dict[str, set] = {}
    first: dict[str, str] = {}
    for path, label, where in pairs:
        labels.setdefault(os.path.normpath(path), set()).add(str(label))
        first.setdefault(os.path.normpath(path), where)
    kept, rejected = [], []
    for path, label, where in pairs:
        key = os.path.normpath(path)
        if key in taken:
            rejected.append((path, f"{where}: also in the train split"))
        elif len(labels[key]) > 1:
            listed = ", ".join(sorted(labels[key]))
            rejected.append((path, f"{where}: one file with {len(labels[key])} labels ({listed})"))
        elif first[key] != where:
            rejected.append((path, f"{where}: duplicate of {first[key]}"))
        else:
            kept.append((path, label, where))
    return kept, rejected


# --- list:FILE[:ROOT] ---------------------------------------------------------------------------

def _list_lines(list_file: Path) -> list[str]:
    try:  # a regular file of bounded size: a FIFO or /dev/zero would block or never end
        data = read_bytes(_existing(list_file, "list"), LIST_MAX_BYTES, "list file")
    except ParseError as exc:
        raise ShardInputError(str(exc)) from None
    except OSError as exc:
        raise ShardInputError(f"{list_file}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ShardInputError(f"{list_file}:{line}: not UTF-8 text (list files are UTF-8, "
                              f"'relative/path label' per line)") from None


def _parse_label(text: str, where: str) -> int | None:
    """The label of a list line; None when it is not a label; an error above MAX_LABEL."""
    if not LABEL.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"  # "0003" is label 3
    if len(digits) > len(str(MAX_LABEL)) or int(digits) > MAX_LABEL:  # no int() of 10^5 digits
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise ShardInputError(f"{where}: label {shown} is above {MAX_LABEL:,}, the largest "
                              f"label a list may use")
    return int(digits)


def read_pairs(list_file: Path, root: Path, allow_outside: bool) -> tuple[list[Pair], list]:
    """Lines ``relative/path label`` -> ((path, label, FILE:LINE) pairs, rejected)."""
    pairs, rejected = [], []
    for number, line in enumerate(_list_lines(list_file), 1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        where = f"{list_file}:{number}"
        if len(fields) != 2:
            raise ShardInputError(f"{where}: expected 'relative/path label'")
        path, reason = _checked_path(root, fields[0].strip(), allow_outside)
        label = _parse_label(fields[1], where)
        if label is None:
            reason = reason or f"unknown label {fields[1][:40]!r}"
        if reason is not None:
            rejected.append((path, reason))
        else:
            pairs.append((path, label, where))
    kept, duplicates = _unique(pairs)
    return kept, rejected + duplicates


def image_list(spec: str, val_list: str | None, allow_outside: bool):
    """(classes, class_ids, splits, rejected) of ``list:FILE[:ROOT]`` (+ the val list)."""
    file, _, root = spec.partition(":")
    list_file = Path(file)
    base = Path(root) if root else list_file.parent
    _existing(base, "list ROOT")
    train, rejected = read_pairs(list_file, base, allow_outside)
    class_ids = sorted({label for _, label, _ in train})
    width = len(str(class_ids[-1])) if class_ids else 1
    classes = [f"{c:0{width}d}" for c in class_ids]
    dense = {c: k for k, c in enumerate(class_ids)}
    splits = {"train": [Item(p, dense[label], read_file, p) for p, label, _ in train]}
    if val_list:
        val, val_rejected = read_pairs(Path(val_list), base, allow_outside)
        val, leaked = _unique(val, {os.path.normpath(p) for p, _, _ in train})
        rejected += val_rejected + leaked
        splits["val"] = []
        for path, label, _ in val:  # missing files are rejected when read
            if label in dense:
                splits["val"].append(Item(path, dense[label], read_file, path))
            else:
                rejected.append((path, f"unknown label {label}"))
    return classes, class_ids, splits, rejected


# --- inat:JSON[:ROOT] ---------------------------------------------------------------------------

class _NotCoco(ValueError):
    """A field of the json with the wrong type; the message names it."""


def _checked(value, field: str, kinds: tuple, want: str):
    """``value`` when it is one of ``kinds`` (a bool is no integer: ``true`` would be id 1);
    _NotCoco naming ``field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        shown = json.dumps(value)
        raise _NotCoco(f"{field}: expected {want}, got {shown[:40]}{'...' * (len(shown) > 40)}")
    return value


def _coco_fields(doc) -> tuple[list, list, list]:
    """(images, annotations, categories) of a COCO json as (id, file_name), (image_id,
    category_id) and (id, name) pairs. Category ids are integers (as in COCO and iNat), image ids
    integers or strings; a list, object, float or bool id is refused, since it could not be
    looked up or would equal another (1.0 and true are 1). A category without a name is named
    by its id."""
    image_id, category_id = (int, str), (int,)
    images = [(_checked(im["id"], f"images[{i}].id", image_id, "an integer or a string"),
               _checked(im["file_name"], f"images[{i}].file_name", (str,), "a string"))
              for i, im in enumerate(doc["images"])]
    annotations = [
        (_checked(a["image_id"], f"annotations[{i}].image_id", image_id, "an integer or a string"),
         _checked(a["category_id"], f"annotations[{i}].category_id", category_id, "an integer"))
        for i, a in enumerate(doc.get("annotations", []))]
    cats = []
    for i, c in enumerate(doc.get("categories", [])):
        cid = _checked(c["id"], f"categories[{i}].id", category_id, "an integer")
        name = _checked(c.get("name", str(cid)), f"categories[{i}].name", (str,), "a string")
        if not name.strip():
            raise _NotCoco(f"categories[{i}].name: empty")
        cats.append((cid, name))
    return images, annotations, sorted(cats)


def _load_json(json_file: Path):
    try:
        doc = read_json(_existing(json_file, "inat"), INAT_MAX_BYTES, "iNaturalist/COCO json")
    except ParseError as exc:
        raise ShardInputError(str(exc)) from None
    except OSError as exc:
        raise ShardInputError(f"{json_file}: {exc.strerror or exc}") from None
    try:
        images, annotations, cats = _coco_fields(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = str(exc) if isinstance(exc, _NotCoco) else f"{exc.__class__.__name__}: {exc}"
        raise ShardInputError(f"{json_file}: not an iNaturalist/COCO json "
                              f"({' '.join(detail.split())[:200]})") from None
    ids = Counter(cid for cid, _ in cats)
    twice = next((cid for cid, n in ids.items() if n > 1), None)
    if twice is not None:  # one id with two names: which class its images are is unknown
        named = ", ".join(repr(name) for cid, name in cats if cid == twice)
        raise ShardInputError(f"{json_file}: category id {twice} is given {ids[twice]} times "
                              f"({named}); category ids must be unique")
    bad = next((name for _, name in cats if not is_unicode(name)), None)
    if bad is not None:
        raise ShardInputError(f"{json_file}: category name {bad.encode('utf-8', 'replace')!r} "
                              f"is not valid Unicode")
    return images, annotations, cats


def _inat_split(json_file: Path, root: Path, category_index: dict | None, allow_outside: bool):
    """Items of one COCO-style json; the train json defines the categories."""
    images, annotations, cats = _load_json(json_file)
    names = None
    if category_index is None:
        if not cats:
            raise ShardInputError(f"{json_file}: no categories")
        category_index = {cid: k for k, (cid, _) in enumerate(cats)}
        names = [name for _, name in cats]
    image_count = Counter(i for i, _ in images)
    notes = Counter(i for i, _ in annotations)
    labels = dict(annotations)
    pairs, rejected = [], []
    for image_id, name in images:
        path, reason = _checked_path(root, name, allow_outside)
        where = f"{json_file}: image id {image_id!r}"
        if reason is None and image_count[image_id] > 1:
            reason = f"{where} appears {image_count[image_id]} times"
        elif reason is None and notes[image_id] > 1:
            reason = f"{where} has {notes[image_id]} annotations"
        elif reason is None and labels.get(image_id) not in category_index:
            reason = f"unknown label {labels.get(image_id)!r}"
        if reason is None:
            pairs.append((path, category_index[labels[image_id]], where))
        else:
            rejected.append((path, reason))
    return names, category_index, pairs, rejected


def inat(spec: str, val_json: str | None, allow_outside: bool):
    """(classes, class_ids, splits, rejected) of ``inat:JSON[:ROOT]`` (+ the val json)."""
    file, _, root = spec.partition(":")
    base = Path(root) if root else Path(file).parent
    _existing(base, "inat ROOT")
    names, cat_index, train, rejected = _inat_split(Path(file), base, None, allow_outside)
    train, duplicates = _unique(train)
    rejected += duplicates
    splits = {"train": [Item(p, k, read_file, p) for p, k, _ in train]}
    if val_json:
        _, _, val, val_rejected = _inat_split(Path(val_json), base, cat_index, allow_outside)
        val, duplicates = _unique(val, {os.path.normpath(p) for p, _, _ in train})
        rejected += val_rejected + duplicates
        splits["val"] = [Item(p, k, read_file, p) for p, k, _ in val]
    return names, list(cat_index), splits, rejected
