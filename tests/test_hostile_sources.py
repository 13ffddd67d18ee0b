"""SOURCE layouts and label files that silently changed the data: an OUT the next run reads back
as a class, files an imagefolder skipped without a word, iNat ids that collide or cannot be
looked up. Each is refused in one line (exit 2) or recorded in rejected.tsv."""

from __future__ import annotations

import io
import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image

from ltpipe.shards.format import load_manifest
from ltpipe.train.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *needles) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for needle in needles:
        assert str(needle) in lines[0], lines
    return lines[0]


def jpeg(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buf, format="JPEG")
    return buf.getvalue()


def folder(root, files: list[str]):
    for i, rel in enumerate(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg((i * 30 % 256, 0, 0)))
    return root


def rejected(out) -> dict[str, str]:
    return dict(line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines())


# --- an OUT inside the folder it reads ------------------------------------------------------------

def test_out_inside_an_imagefolder_is_refused(tmp_path):
    """`ltpipe shard imagefolder:/x /x/0out` twice: the second run read 0out as a class, every
    label shifted by one, exit 0."""
    root = folder(tmp_path / "imgs", ["a/1.jpg", "b/2.jpg"])
    for out in (root / "0out", root, root / "a" / "deeper"):
        one_line_error(run("shard", f"imagefolder:{root}", out), f"OUT {out}: inside the SOURCE "
                                                                 f"folder {root}")
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]  # nothing written
    elsewhere = tmp_path / "elsewhere"
    os.symlink(elsewhere, root / "link")  # OUT reached through a link the scan would list
    one_line_error(run("shard", f"imagefolder:{root}", root / "link" / "out"), "inside the SOURCE")
    os.symlink(root, tmp_path / "alias")  # the folder reached through a link
    one_line_error(run("shard", f"imagefolder:{tmp_path / 'alias'}", root / "0out"),
                   "inside the SOURCE")
    (root / "link").unlink()
    r = run("shard", f"imagefolder:{root}", elsewhere)
    assert r.exit_code == 0 and load_manifest(elsewhere).classes == ("a", "b"), r.output


def test_out_inside_a_list_root_is_not_read_back(tmp_path):
    """list: reads only the files it names, so an OUT inside ROOT is allowed: a re-run finds
    its own output complete."""
    root = folder(tmp_path / "root", ["a.jpg", "b.jpg"])
    (root / "train.txt").write_text("a.jpg 0\nb.jpg 1\n")
    for _ in range(2):
        r = run("shard", f"list:{root / 'train.txt'}", root / "out")
        assert r.exit_code == 0, r.output
    assert r.stdout.startswith("already complete") and load_manifest(root / "out").classes == \
        ("0", "1")


# --- what an imagefolder does not read ----------------------------------------------------------

def test_imagefolder_records_every_file_it_does_not_read(tmp_path):
    root = folder(tmp_path / "imgs", ["a/1.jpg", "a/pic.jfif", "b/2.jpg", "stray.jpg"])
    for rel in ("a/noext", "a/pic.avif", "b/.DS_Store"):
        (root / rel).write_bytes(b"whatever")
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0 and "3 train" in r.stdout and "4 rejected" in r.stdout, r.output
    assert rejected(out) == {
        f"{root}/stray.jpg": "not read: not in a class folder",
        f"{root}/a/noext": "not read: not an image extension (none)",
        f"{root}/a/pic.avif": "not read: not an image extension (.avif)",
        f"{root}/b/.DS_Store": "not read: not an image extension (none)"}
    assert load_manifest(out).split("train").class_counts == (2, 1)  # pic.jfif is a JPEG
    r = run("shard", f"imagefolder:{root}", "--dry-run")
    assert f"rejected while planning: 4 (first: {root}/stray.jpg: not read: " in r.stdout, r.output


def test_imagefolder_with_train_and_val_records_the_other_entries(tmp_path):
    root = folder(tmp_path / "imgs", ["train/a/1.jpg", "train/b/2.jpg", "train/loose.jpg",
                                      "val/a/3.jpg", "test/a/4.jpg", "README.jpg"])
    out = tmp_path / "out"
    r = run("shard", f"imagefolder:{root}", out)
    assert r.exit_code == 0 and r.stdout.startswith("wrote 2 train / 1 val"), r.output
    assert rejected(out) == {
        f"{root}/README.jpg": "not read: only train/ and val/ are read in this layout",
        f"{root}/test": "not read: only train/ and val/ are read in this layout",
        f"{root}/train/loose.jpg": "not read: not in a class folder"}


def test_a_val_that_is_a_file_is_refused(tmp_path):
    root = folder(tmp_path / "imgs", ["train/a/1.jpg", "train/b/2.jpg", "val"])
    one_line_error(run("shard", f"imagefolder:{root}", tmp_path / "out"),
                   f"imagefolder {root}/val: not a directory")


@pytest.mark.parametrize("layout", ["flat", "train/val"])
def test_a_class_folder_without_images_is_refused(tmp_path, layout):
    """It became a class with 0 training images (exit 0), which most long-tail losses and the
    class-weighted samplers cannot take."""
    base = tmp_path / "imgs" / ("train" if layout == "train/val" else "")
    folder(base, ["a/1.jpg", "b/2.jpg"])
    (base / "empty").mkdir()
    (base / "texts").mkdir()
    (base / "texts" / "notes.txt").write_text("no image")
    one_line_error(run("shard", f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "out"),
                   f"imagefolder {base / 'empty'}: no images; class 'empty' would have no "
                   f"training image")
    (base / "empty").rmdir()
    one_line_error(run("shard", f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "out"),
                   f"imagefolder {base / 'texts'}: no images")
    assert not (tmp_path / "out").exists()


def test_an_empty_val_class_folder_is_allowed(tmp_path):
    """val may lack a class: it is evaluated on fewer classes, nothing is mislabelled."""
    root = folder(tmp_path / "imgs", ["train/a/1.jpg", "train/b/2.jpg", "val/a/3.jpg"])
    (root / "val" / "b").mkdir()
    r = run("shard", f"imagefolder:{root}", tmp_path / "out")
    assert r.exit_code == 0 and load_manifest(tmp_path / "out").split("val").class_counts == \
        (1, 0), r.output


# --- iNat / COCO ids ----------------------------------------------------------------------------

def inat(tmp_path, categories, images=None, annotations=None):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    path = tmp_path / "train.json"
    path.write_text(json.dumps({
        "images": images or [{"id": 1, "file_name": "a.jpg"}],
        "annotations": annotations or [{"image_id": 1, "category_id": 1}],
        "categories": categories}))
    return path


@pytest.mark.parametrize("categories, images, annotations, needle", [
    ([{"id": [1], "name": "x"}], None, None, "categories[0].id: expected an integer, got [1]"),
    ([{"id": 1, "name": "x"}, {"id": True, "name": "y"}], None, None,
     "categories[1].id: expected an integer, got true"),
    ([{"id": 1.0, "name": "x"}], None, None, "categories[0].id: expected an integer, got 1.0"),
    ([{"id": 1}], None, [{"image_id": 1, "category_id": [1]}],
     "annotations[0].category_id: expected an integer, got [1]"),
    ([{"id": 1}], None, [{"image_id": {"a": 1}, "category_id": 1}],
     'annotations[0].image_id: expected an integer or a string, got {"a": 1}'),
    ([{"id": 1}], [{"id": {"a": 1}, "file_name": "a.jpg"}], None,
     'images[0].id: expected an integer or a string, got {"a": 1}'),
    ([{"id": 1, "name": None}], None, None, "categories[0].name: expected a string, got null"),
    ([{"id": 1, "name": 7}], None, None, "categories[0].name: expected a string, got 7"),
    ([{"id": 1, "name": " "}], None, None, "categories[0].name: empty"),
], ids=["list-id", "bool-id", "float-id", "list-category-id", "dict-image-id-note",
        "dict-image-id", "null-name", "number-name", "blank-name"])
def test_inat_fields_of_the_wrong_type_are_one_line(tmp_path, categories, images, annotations,
                                                    needle):
    """A list or object id was a TypeError traceback (unhashable); true and 1.0 are id 1; a
    null name became the class "None"."""
    path = inat(tmp_path, categories, images, annotations)
    one_line_error(run("shard", f"inat:{path}", tmp_path / "out"),
                   f"{path}: not an iNaturalist/COCO json ({needle})")


def test_inat_duplicate_category_ids_are_refused(tmp_path):
    """Classes [x, y, z] with class_ids [1, 2]: every image of category 1 went to y, x had none,
    exit 0."""
    path = inat(tmp_path, [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}, {"id": 2, "name": "z"}])
    one_line_error(run("shard", f"inat:{path}", tmp_path / "out"),
                   f"{path}: category id 1 is given 2 times ('x', 'y')")
    (tmp_path / "b.jpg").write_bytes(jpeg((0, 0, 200)))
    path = inat(tmp_path, [{"id": 2, "name": "z"}, {"id": 1, "name": "x"}],  # unique: accepted
                [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 2}])
    r = run("shard", f"inat:{path}", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "out")
    assert m.classes == ("x", "z") and m.raw["class_ids"] == [1, 2]
    assert m.split("train").class_counts == (1, 1)
