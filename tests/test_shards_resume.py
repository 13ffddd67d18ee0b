"""Reliability: a re-run after an interruption or a hard kill resumes and gives byte-identical
output; finished outputs are left alone; OUT from a different command is refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ltpipe.shards.errors import ShardInputError
from ltpipe.shards.journal import JOURNAL
from ltpipe.shards.write import write_shards

# the command is recorded in the manifest; fixed here because each run has its own OUT path
OPTS = dict(classes=6, max_per_class=60, samples_per_shard=12, progress=False,
            command="ltpipe shard synthetic OUT")


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    write_shards("synthetic", out, **OPTS)
    return tree(out)


def test_resume_after_interrupt_is_byte_identical(tmp_path, clean):
    out = tmp_path / "out"
    seen = []

    def stop_after_three(record):
        seen.append(record.name)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards("synthetic", out, on_shard=stop_after_three, **OPTS)
    assert (out / JOURNAL).is_file() and not (out / "manifest.json").exists()
    resumed = []
    write_shards("synthetic", out, on_shard=lambda r: resumed.append(r.name), **OPTS)
    assert resumed[0] == "shard-000003.tar"  # the three finished shards were kept
    assert tree(out) == clean


def test_resume_after_hard_kill_with_damage(tmp_path, clean):
    """A subprocess dies (os._exit) mid-run; a kept shard is then damaged and a partial temp file
    left behind: the re-run rewrites from the damaged shard on and matches the clean output."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os
        from ltpipe.shards.write import write_shards
        n = []
        def die(record):
            n.append(1)
            if len(n) == 4:
                os._exit(9)
        write_shards("synthetic", {str(out)!r}, on_shard=die, **{OPTS!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    shard1 = out / "train" / "shard-000001.tar"
    data = bytearray(shard1.read_bytes())
    data[2000] ^= 0xFF
    shard1.write_bytes(bytes(data))
    (out / "train" / "shard-000004.tar.tmp").write_bytes(b"partial")
    (out / "train" / "index.npy.tmp").write_bytes(b"partial")
    (out / "manifest.json.tmp").write_bytes(b"partial")
    resumed = []
    write_shards("synthetic", out, workers=2, on_shard=lambda r: resumed.append(r.name), **OPTS)
    assert resumed[0] == "shard-000001.tar"
    assert tree(out) == clean


def test_rerun_of_finished_output_changes_nothing(tmp_path, clean):
    out = tmp_path / "out"
    write_shards("synthetic", out, **OPTS)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    calls = []
    m = write_shards("synthetic", out, on_shard=calls.append, **OPTS)
    assert calls == [] and m.split("train").num_samples > 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_out_from_a_different_command_is_refused(tmp_path):
    out = tmp_path / "out"
    write_shards("synthetic", out, **OPTS)
    with pytest.raises(ShardInputError, match=r"different command \(differs in: seed\)"):
        write_shards("synthetic", out, **{**OPTS, "seed": 1})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ShardInputError, match="not empty and not written by `ltpipe shard`"):
        write_shards("synthetic", foreign, **OPTS)


def test_changed_inputs_are_never_mixed_with_old_shards(tmp_path):
    """Same command, but the folder changed after an interruption (and after a finished run):
    the output equals a clean run on the new inputs."""
    from PIL import Image

    def folder(root, names):
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (len(name) * 20 % 255, 0, 0)).save(root / name)

    opts = dict(samples_per_shard=3, progress=False, command="ltpipe shard imagefolder:SRC OUT")
    src, out = tmp_path / "src", tmp_path / "out"
    folder(src, [f"{c}/{i}.png" for c in "ab" for i in range(6)])

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(f"imagefolder:{src}", out, on_shard=stop, **opts)
    (src / "a" / "0.png").unlink()
    folder(src, ["b/new.png"])
    write_shards(f"imagefolder:{src}", out, **opts)
    ref = tmp_path / "ref"
    write_shards(f"imagefolder:{src}", ref, **opts)
    assert tree(out) == tree(ref)
    folder(src, ["a/later.png"])
    m = write_shards(f"imagefolder:{src}", out, **opts)
    assert m.split("train").class_counts == (6, 7)


def test_output_from_before_the_later_options_is_still_complete(tmp_path):
    """A manifest written before --max-pixels/--allow-outside-root/--val-per-class existed
    matches a re-run that leaves them at their defaults: nothing is rewritten."""
    import json

    out = tmp_path / "out"
    write_shards("synthetic", out, **OPTS)
    doc = json.loads((out / "manifest.json").read_text())
    for key in ("max_pixels", "allow_outside_root", "val_per_class"):
        del doc["options"][key]
    (out / "manifest.json").write_text(json.dumps(doc))
    before = tree(out)
    write_shards("synthetic", out, **OPTS)
    assert tree(out) == before
