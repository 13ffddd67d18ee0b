"""Every JSON and TOML file ltpipe parses has a size and depth limit (shards/bounded.py): a nested,
huge or out-of-range document is one line naming the file, never a RecursionError,
OverflowError or MemoryError traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from click.testing import CliRunner

from ltpipe.shards.format import ShardFormatError, load_manifest
from ltpipe.train.cli import main

TINY = ["--classes", "3", "--max-per-class", "6", "--image-size", "16"]
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # RecursionError in json's C scanner
DEEP = 40  # valid nesting, just over the limit of 32


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(r, *needles, code=2):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for needle in needles:
        assert str(needle) in lines[0], lines
    return lines[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("parse") / "s"
    assert run("shard", "synthetic", out, *TINY).exit_code == 0
    return out


def copy(shards, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shards, out)
    return out


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("edit, needle", [
    (lambda doc: DEEP_JSON, "nested deeper than 32 levels"),
    (lambda doc: json.dumps({**doc, "x": json.loads(nested(DEEP))}), "nested deeper than 32"),
    (lambda doc: json.dumps(doc).replace('"format_version": 1', '"format_version": 1e400'),
     "number 1e400 is out of range"),
    (lambda doc: json.dumps(doc).replace('"format_version": 1', '"format_version": NaN'),
     "NaN is not a JSON number"),
    (lambda doc: json.dumps({**doc, "format_version": 1.0}), "format_version: expected int"),
    (lambda doc: json.dumps({**doc, "format_version": True}), "format_version: expected int"),
    (lambda doc: json.dumps({**doc, "classes": "abc"}), "classes: expected list"),
    (lambda doc: json.dumps(doc).replace('"samples": ', '"samples": 1e3 + '),
     "not valid JSON"),
], ids=["deep-syntax", "deep-valid", "1e400", "nan", "float-version", "bool-version",
        "classes-str", "garbage"])
def test_a_damaged_manifest_is_one_line(shards, tmp_path, edit, needle):
    out = copy(shards, tmp_path)
    path = out / "manifest.json"
    path.write_text(edit(json.loads(path.read_text())))
    line = one_line(run("inspect", out, "--verify"), path, needle)
    assert len(line) < 400
    with pytest.raises(ShardFormatError, match=needle.split(":")[0]):
        load_manifest(out)


def _set(path: list, value):
    """An edit of the manifest document: the field at ``path`` set to ``value``."""
    def edit(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return edit


@pytest.mark.parametrize("edit, unknown", [
    (_set(["totals"], [1]), "rejected: unknown (totals.rejected in manifest.json"),
    (_set(["totals", "rejected"], True), "rejected: unknown (totals.rejected in manifest.json"),
    (_set(["splits", "train", "image_stats"], {"width": 5}),
     "images: unknown (splits.train.image_stats in manifest.json is malformed)"),
    (_set(["splits", "train", "image_stats"], [1]), "images: unknown (splits.train.image_stats"),
    (_set(["splits", "val", "image_stats", "width", "mean"], "x"),
     "images: unknown (splits.val.image_stats"),
], ids=["totals-list", "rejected-bool", "stats-no-height", "stats-list", "mean-str"])
def test_a_malformed_informative_field_is_shown_as_unknown(shards, tmp_path, edit, unknown):
    """They crashed `inspect` (AttributeError, KeyError, a format-code ValueError); they are
    informative (FORMAT.md), so the rest is shown and the shards still verify and load."""
    from ltpipe.pipeline.loader_args import natural_preset

    out = copy(shards, tmp_path)
    path = out / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    r = run("inspect", out, "--verify")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert r.stdout.count(unknown) == 1 and "verify: OK" in r.stdout
    assert natural_preset(load_manifest(out), "train")[0] in ("cifar", "imagenet")


def _no_classes(doc):
    doc["classes"] = []
    for split in doc["splits"].values():
        split["class_counts"] = []


@pytest.mark.parametrize("edit, needle", [
    (_no_classes, "classes: empty"),
    (_set(["splits"], {}), "splits: no 'train' split"),
    (lambda doc: doc["splits"].pop("train"), "splits: no 'train' split"),
    (_set(["class_ids"], 5), "class_ids: expected list"),
    (_set(["class_ids"], [1, [2], 3]), "class_ids: expected 3 integers or strings"),
], ids=["no-classes", "no-splits", "no-train", "class-ids-int", "class-ids-list"])
def test_a_manifest_no_writer_makes_is_one_line(shards, tmp_path, edit, needle):
    """No classes crashed inspect (a zero-size array); no splits, or no train split, verified
    "OK (0 samples)" with the tars on disk."""
    out = copy(shards, tmp_path)
    path = out / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    one_line(run("inspect", out, "--verify"), path, needle)
    with pytest.raises(ShardFormatError, match=needle.split(":")[0]):
        load_manifest(out)


def test_verify_names_the_tars_the_manifest_does_not_list(shards, tmp_path):
    out = copy(shards, tmp_path)
    path = out / "manifest.json"
    doc = json.loads(path.read_text())
    val = doc["splits"].pop("val")
    path.write_text(json.dumps(doc))
    r = run("inspect", out, "--verify")
    assert r.exit_code == 1 and "verify: OK" not in r.stdout, r.output
    unlisted = [f"{out / 'val' / shard['name']}: not listed in {path}, not verified"
                for shard in val["shards"]]
    assert unlisted and all(line in r.stderr for line in unlisted)


def test_a_manifest_over_its_size_limit_is_refused_unread(shards, tmp_path, monkeypatch):
    from ltpipe.shards import format as fmt

    out = copy(shards, tmp_path)
    size = (out / "manifest.json").stat().st_size
    monkeypatch.setattr(fmt, "MANIFEST_MAX_BYTES", size - 1)
    one_line(run("inspect", out), f"{size:,} bytes, more than the")


@pytest.mark.timeout(30)
def test_a_fifo_named_manifest_json_is_not_opened(shards, tmp_path):
    out = copy(shards, tmp_path)
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")  # opening it for reading would wait for a writer
    with pytest.raises(ShardFormatError):
        load_manifest(out)


@pytest.mark.parametrize("pid, needle", [
    ("1e999", "unreadable lock file"),  # json reads inf; int(inf) was an OverflowError
    (str(10**30), "locked by pid 1000000000000000000000000000000"),  # os.kill overflowed
    ("-5", "locked by pid -5"),
    (f'[{nested(DEEP)}]', "unreadable lock file"),
], ids=["1e999", "10^30", "negative", "deep"])
def test_a_lock_file_with_an_absurd_pid_is_one_line(tmp_path, pid, needle):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ltpipe.lock").write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {pid}, "command": "x"}}\n')
    one_line(run("shard", "synthetic", out, *TINY), needle)


def test_a_deep_inat_json_and_an_out_of_range_id_are_one_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": json.loads(nested(DEEP)), "annotations": []}))
    one_line(run("shard", f"inat:{path}", tmp_path / "a"), "nested deeper than 32")
    path.write_text('{"images": [{"id": 1e400, "file_name": "a.jpg"}], "categories": []}')
    one_line(run("shard", f"inat:{path}", tmp_path / "b"), "1e400 is out of range")


def test_a_deep_sample_json_member_of_a_shards_source_is_one_line(shards, tmp_path):
    """`shards:DIR` reads each sample's .json member (its source path)."""
    import tarfile

    out = copy(shards, tmp_path)
    tar = out / "train" / "shard-000000.tar"
    with tarfile.open(tar) as tf:
        member = next(m for m in tf if m.name.endswith(".json"))
    data = bytearray(tar.read_bytes())
    body = nested(member.size // 2).encode()[:member.size]
    data[member.offset_data:member.offset_data + member.size] = body
    tar.write_bytes(bytes(data))
    one_line(run("shard", f"shards:{out}", tmp_path / "again"), "unreadable .json member")


def _train(*args):
    from ltpipe.train.train_cli import train

    return CliRunner().invoke(train, [str(a) for a in args])


@pytest.mark.parametrize("text", [
    f"[train]\nmilestones = {nested(2000)}\n",  # tomllib recursed: RecursionError
    "[train]\n" + "a." * 3000 + "b = 1\n",  # dotted keys: deep tables, without recursion
    f"[train]\nmilestones = {nested(DEEP)}\n",
    "[train]\nepochs = " + "9" * 5000 + "\n",  # int() refuses 5,000 digits: ValueError
], ids=["deep-array", "dotted-keys", "valid-but-deep", "5000-digits"])
def test_a_deep_or_huge_recipe_is_one_line(shards, tmp_path, text):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    r = _train(shards, "--out", tmp_path / "r", "--recipe", recipe, "--epochs", "1")
    line = one_line(r, recipe)
    assert len(line) < 400 and not (tmp_path / "r").exists()


def test_a_deep_mixer_option_is_one_line(shards, tmp_path):
    r = _train(shards, "--out", tmp_path / "r", "--mixer", "cutmix", "--mixer-opt",
               f"alpha={nested(2000)}", "--epochs", "1")
    one_line(r, "nested deeper than")


def test_a_deep_config_toml_and_shards_json_of_a_run_are_one_line(shards, tmp_path):
    """--resume reads RUN/config.toml, then RUN/shards.json."""
    from ltpipe.train.shard_identity import check_identity

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(f"[train]\nmilestones = {nested(2000)}\n")
    one_line(_train("--resume", run_dir), run_dir / "config.toml", "nested deeper than")
    (run_dir / "shards.json").write_text(DEEP_JSON)
    with pytest.raises(ValueError, match="nested deeper than") as err:
        check_identity(run_dir, shards)
    assert "\n" not in str(err.value)


class Killed(Exception):
    pass


def test_a_deep_journal_line_is_treated_as_cut_by_a_kill(tmp_path):
    """A resume keeps the journal's good lines and rewrites from a damaged one."""
    from ltpipe.shards.journal import JOURNAL
    from ltpipe.shards.write import write_shards

    opts = dict(classes=3, max_per_class=6, image_size=16, samples_per_shard=4, progress=False)
    write_shards("synthetic", tmp_path / "fresh", **opts)

    def kill(record):
        if record.name == "shard-000001.tar":
            raise Killed

    out = tmp_path / "out"
    with pytest.raises(Killed):
        write_shards("synthetic", out, on_shard=kill, **opts)
    with open(out / JOURNAL, "a") as f:
        f.write(DEEP_JSON + "\n")
    write_shards("synthetic", out, **opts)
    for split in ("train", "val"):
        assert {p.name: p.read_bytes() for p in (out / split).iterdir()} == \
            {p.name: p.read_bytes() for p in (tmp_path / "fresh" / split).iterdir()}


def test_a_deep_metrics_line_is_one_line(tmp_path):
    from ltpipe.train.report import MetricsError, RunReport

    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"epoch": 0}) + "\n" + DEEP_JSON + "\n" + json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(MetricsError, match="line 2 is not an epoch record"):
        RunReport(tmp_path, enabled=True).lines()


def test_a_damaged_scan_cache_entry_is_scanned_again(shards, tmp_path, monkeypatch):
    from ltpipe.pipeline.shardset import open_split

    monkeypatch.setenv("LTPIPE_CACHE", str(tmp_path / "cache"))
    open_split(shards, "train")
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert entries
    for entry in entries:
        entry.write_text(DEEP_JSON)
    assert open_split(shards, "train").skipped == 0
    assert all(json.loads(e.read_text())["key"] for e in entries)  # rewritten
