"""The shard writer against hostile and careless input: each case is refused with one line
(exit 2), or recorded in rejected.tsv, never a traceback, a hang or a silent change of the data."""

from __future__ import annotations

import io
import subprocess
import sys

from click.testing import CliRunner
from PIL import Image

from ltpipe.train.cli import main

TINY = ["--classes", "4", "--max-per-class", "12", "--samples-per-shard", "10"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, message: str) -> str:
    """Assert exit 2 with a single ``Error:`` line containing ``message``; return the line."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    return lines[0]


def jpeg(colour=(200, 10, 10), size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


# --- two writers into one OUT ------------------------------------------------------------------

def test_second_writer_of_one_out_exits_2(tmp_path):
    """A real writer, paused after its first shard, makes a second `ltpipe shard` into the same
    OUT refuse (it once resumed from the first one's journal and both wrote, exit 0)."""
    out = tmp_path / "out"
    code = ("import sys, time; from ltpipe.shards.write import write_shards\n"
            "def pause(record):\n"
            "    print('shard', flush=True); time.sleep(30)\n"
            "write_shards('synthetic', sys.argv[1], classes=4, max_per_class=12,\n"
            "             samples_per_shard=10, progress=False, on_shard=pause)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline().strip() == "shard"
        line = one_line_error(run("shard", "synthetic", out, *TINY), f"pid {first.pid}")
        assert "delete" in line and not (out / "manifest.json").exists()
    finally:
        first.kill()
        first.wait()
    r = run("shard", "synthetic", out, *TINY)  # the first is gone: its lock is stale, resume
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train", "val"]
    assert run("inspect", out, "--verify").exit_code == 0
