"""`ltpipe preview`: a PNG of the expected size with one tile per sample, the tiles show the real
(de-normalized) pixels, a CMO mixed tile is made of its background and foreground tiles, and bad
input (m2m without a classifier, an unknown mixer, a split without the mixer's streams) is one
line with exit status 2."""

import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ltpipe.pipeline.minority import ShardBytes
from ltpipe.pipeline.shardset import open_split
from ltpipe.train.cli import main
from ltpipe.train.mixers.preview import CAPTION, HEADER, TILE, grid_size, make_preview
from ltpipe.train.mixers.registry import MIXERS, mixer_class
from ltpipe.train.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


def tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    y = HEADER + row * (TILE + CAPTION)
    return grid[y:y + TILE, col * TILE:(col + 1) * TILE].astype(int)


def test_cmo_rows_of_background_foreground_mixed(shards, tmp_path):
    out = tmp_path / "cmo.png"
    res = CliRunner().invoke(main, ["preview", str(shards), "--mixer", "cmo", "--out", str(out),
                                    "--n", "4", "--seed", "3"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == grid_size(4, 3) == (3 * TILE, HEADER + 4 * (TILE + CAPTION))
        grid = np.asarray(im.convert("RGB"))
    pasted = 0
    for row in range(4):
        bg, fg, mixed = (tile(grid, row, c) for c in range(3))
        from_bg = (mixed == bg).all(axis=2)
        from_fg = (mixed == fg).all(axis=2)
        assert (from_bg | from_fg).all()  # every mixed pixel is the bg's or the fg's (same place)
        pasted += int((from_fg & ~from_bg).sum())
    assert pasted > 0  # mixing is forced on: some foreground pixels were pasted


def test_one_tile_per_sample_shows_the_stored_images(shards, tmp_path):
    out, skipped = make_preview(shards, "none", tmp_path / "none.png", n=5, split="val")
    assert skipped == 0
    with Image.open(out) as im:
        assert im.size == grid_size(5, 1) == (4 * TILE, HEADER + 2 * (TILE + CAPTION))
        grid = np.asarray(im.convert("RGB"))
    data = open_split(shards, "val")
    payloads = ShardBytes(data.rows, data.tar_paths)
    for k in range(5):  # val is read in order, cifar eval is the identity: tile k = sample k
        shown = tile(grid, k // 4, k % 4)[::TILE // 32, ::TILE // 32]  # nearest upscale undone
        jpeg = Image.open(io.BytesIO(payloads.read(k).tobytes())).convert("RGB")
        assert np.abs(shown - np.asarray(jpeg, dtype=int)).mean() < 3.0  # decoder rounding only


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_registered_mixer(shards, tmp_path, name):
    """Two-stream mixers: 3 tiles per sample, others one; otmix reads a freshly built model,
    m2m runs given a classifier g (here an untrained one, T = 1)."""
    opts = {"classifier": build_model("resnet8", 6), "T": 1} if name == "m2m" else {}
    out, _ = make_preview(shards, name, tmp_path / f"{name}.png", n=3, mixer_opts=opts)
    per_sample = 3 if len(mixer_class(name).streams) > 1 else 1
    with Image.open(out) as im:
        assert im.size == grid_size(3, per_sample)


@pytest.mark.parametrize("args, message", [
    (["--mixer", "m2m"], "needs a frozen classifier"),
    (["--mixer", "nosuch"], "mixer: unknown 'nosuch'"),
    (["--mixer", "cmo", "--split", "val"], "only the train split has"),
    (["--mixer", "none", "--n", "1000"], "batch_size: 1000 exceeds"),
    (["--mixer", "cmo", "--mixer-opt", "prob"], "--mixer-opt: expected KEY=VALUE"),
    (["--mixer", "cmo", "--image-size", "0"], "--image-size: must be a positive integer"),
    (["--mixer", "cmo", "--image-size", "50000"], "--image-size: must be a positive integer <="),
    (["--mixer", "cmo", "--seed", "-1"], "--seed: must be an integer in [0, "),
    (["--mixer", "mixup", "--mixer-opt", "alpha=5e-324"], "alpha: must be 0 or at least 2.2e-308"),
    pytest.param(["--mixer", "cmo", "--device", "cuda"], "torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_input_is_one_line_exit_2(shards, tmp_path, args, message):
    out = tmp_path / "g.png"
    res = CliRunner().invoke(main, ["preview", str(shards), "--out", str(out), *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_missing_shards_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["preview", str(tmp_path / "nope"), "--mixer", "cmo",
                                    "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "nope" in res.output


def preview_into(shards, out, *args):
    return CliRunner().invoke(main, ["preview", str(shards), "--mixer", "none", "--out", str(out),
                                     "--n", "2", *map(str, args)])


def one_line(res, *needles):
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output, res.output
    assert res.output.startswith("ltpipe preview: error: "), res.output
    for needle in needles:
        assert str(needle) in res.output, res.output


@pytest.mark.parametrize("inside", ["manifest.json", "train/index.npy", "train/shard-000000.tar",
                                    "val/new.png"])
def test_an_out_inside_the_shards_is_refused_and_nothing_changes(shards, inside):
    """--out SHARDS/manifest.json once replaced the manifest with a PNG, exit status 0."""
    target = shards / inside
    before = target.read_bytes() if target.exists() else None
    one_line(preview_into(shards, target), f"--out {target}", "inside the shard directory")
    assert (target.read_bytes() if target.exists() else None) == before


def test_an_existing_file_that_is_no_png_is_not_overwritten(shards, tmp_path):
    """A run's ckpt/last.pt, say; an earlier grid is replaced."""
    last = tmp_path / "last.pt"
    last.write_bytes(b"a checkpoint")
    one_line(preview_into(shards, last), last, "not a PNG")
    assert last.read_bytes() == b"a checkpoint"
    grid = tmp_path / "grid.png"
    for _ in range(2):
        assert preview_into(shards, grid).exit_code == 0
    assert grid.read_bytes().startswith(b"\x89PNG") and sorted(tmp_path.iterdir()) == [grid, last]


def test_a_missing_out_directory_is_named_not_made(shards, tmp_path):
    out = tmp_path / "no" / "such" / "g.png"
    one_line(preview_into(shards, out), tmp_path / "no" / "such", "no such directory")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args,needle", [
    (["SHARDS", "--mixer", "cmo", "--out", "OUT", "--n", "abc"], "'abc' is not a valid integer"),
    (["--mixer", "cmo", "--out", "OUT"], "Missing argument 'SHARDS'"),
    (["SHARDS", "--mixer", "cmo", "--out", "DIR"], "is a directory"),
])
def test_usage_errors_are_one_line(shards, tmp_path, args, needle):
    """As `ltpipe train` and `ltpipe shard` say them, not click's three-line usage block."""
    names = {"SHARDS": shards, "OUT": tmp_path / "g.png", "DIR": tmp_path}
    res = CliRunner().invoke(main, ["preview", *(str(names.get(a, a)) for a in args)])
    one_line(res, needle)


def test_otmix_preview_takes_its_confusion_from_the_previewed_batch(shards, tmp_path, monkeypatch):
    """Not from a pass over the whole confusion split: the model is untrained, and that pass was
    most of the preview's time."""
    from ltpipe.train.mixers import confusion

    seen = []
    real = confusion.confusion_counts

    def spy(model, steps, *args, **kwargs):
        steps = list(steps)
        seen.append(sum(len(s["uniform"]) for s in steps))
        return real(model, steps, *args, **kwargs)

    monkeypatch.setattr(confusion, "confusion_counts", spy)
    make_preview(shards, "otmix", tmp_path / "otmix.png", n=3)
    assert seen == [3]


def test_smc_mixed_tile_is_captioned_as_an_augmented_view(shards):
    from ltpipe.pipeline.batch import Batch, MixedBatch
    from ltpipe.train.mixers.preview import tiles

    b = Batch(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1]))
    plain = MixedBatch.unmixed(b)
    views = MixedBatch(plain.images, plain.y_a, plain.y_b, plain.lam, {"views": 2})
    names = tuple(f"c{k}" for k in range(6))
    assert tiles({"uniform": b}, plain, names)[0][0][1] == "mixed"
    assert tiles({"uniform": b}, views, names)[0][0][1] == "mixed, augmented view"


@pytest.mark.parametrize("mixer,params,note", [
    ("cmo", {}, "lam = bg label share; a random fg patch, one box per batch"),
    ("cutmix", {"box": "sample"}, "lam = bg label share; a random fg patch, a box each"),
    ("mixup", {}, "lam = bg label share"),
])
def test_the_header_says_how_to_read_the_tiles(mixer, params, note):
    """Why a CMO tile can show a patch with no foreground object: CutMix pastes a random box of
    the foreground image (one per batch in the paper recipes), and lam is the background's share."""
    from ltpipe.train.mixers.base import MixerEnv
    from ltpipe.train.mixers.preview import reading_note

    env = MixerEnv(torch.tensor([5, 3, 1]), torch.device("cpu"), image_size=32, batch_size=2,
                   epochs=1)
    assert reading_note(mixer_class(mixer)(env, **params)) == note
