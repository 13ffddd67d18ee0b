"""``ltpipe preview``: a PNG grid of what the pipeline feeds the model.

``ltpipe preview SHARDS --mixer NAME --out grid.png`` builds the loader with the mixer's streams
(CPU by default), takes one step, runs the mixer built the way the trainer builds it
(train/build.py: make_env, make_mixer, make_model_and_criterion, so mixers that read the model,
e.g. OTmix's features, get a freshly built one) and writes a PNG grid:
  * mixers with two streams: one row per sample, [first stream | second stream | mixed], i.e.
    background | foreground | mixed for CMO/SMC/OTmix (an OTmix row shows the background its
    foreground was paired with, ``extras["pairs"]``); SMC shows its first view, captioned as
    augmented (its view augmentation runs after the mix);
  * mixers with one stream (none, cutmix, mixup, resizemix, remix): one tile per sample.
Captions: class names from the manifest, and on the mixed tile "lam" = λ (the weight of y_a, the
background label, METHODS.md: Conventions) with y_a / y_b. The loader's normalization is undone.
Mixing is forced on (prob 1, mix_schedule "always", epoch E−1 of E, OTmix's OT path forced, its
confusion matrix from the previewed batch and the untrained model);
``--mixer-opt KEY=VALUE`` overrides any mixer param (m2m needs ``classifier="RUN"``).
Bad input, usage errors included, is one line and exit status 2; ``--out`` replaces only an
earlier PNG, never a file inside SHARDS, and is written whole (a temporary name, then rename).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from ltpipe.shards.outputs import check_png_out

TILE = 128  # px, every tile is TILE x TILE
CAPTION = 28  # px below each tile (two text lines)
HEADER = 32  # px above the grid (two lines: mixer, split, streams; how to read the tiles)
ONE_STREAM_COLUMNS = 4
ROLES = {"uniform": "bg · uniform", "minority": "fg · minority"}  # CMO/SMC/OTmix roles
EPOCHS = 10  # the preview's step runs in epoch EPOCHS − 1


def grid_size(n: int, tiles_per_sample: int) -> tuple[int, int]:
    """(width, height) in px of the grid for n samples."""
    cols = tiles_per_sample if tiles_per_sample > 1 else min(n, ONE_STREAM_COLUMNS)
    rows = n if tiles_per_sample > 1 else math.ceil(n / cols)
    return cols * TILE, HEADER + rows * (TILE + CAPTION)


def fail(message: str) -> None:
    click.echo(f"ltpipe preview: error: {message}", err=True)
    sys.exit(2)


# ---------------------------------------------------------------- one mixed step

def build_parts(shards: Path, mixer: str, n: int, device: str, preset: str, image_size: int,
                model: str, seed: int, mixer_opts: dict, skip_corrupt: bool = False):
    """(config's train table, env, mixer, model) as the trainer builds them."""
    import torch

    from ltpipe.shards.format import load_manifest
    from ltpipe.train import build
    from ltpipe.train.config import resolve
    from ltpipe.train.dist import DistInfo
    from ltpipe.train.mixers.registry import mixer_params

    forced = {k: v for k, v in (("prob", 1.0), ("mix_schedule", "always"))
              if k in mixer_params(mixer)}
    train = dict(mixer=mixer, model=model, batch_size=n, image_size=image_size, preset=preset,
                 precision="fp32", channels_last=False, device=device, epochs=EPOCHS, seed=seed,
                 skip_corrupt=skip_corrupt)
    cfg = resolve({}, train, {**forced, **mixer_opts})
    info = DistInfo(0, 1, 0, torch.device(device))
    counts = torch.tensor(load_manifest(shards).split("train").class_counts, dtype=torch.int64)
    env = build.make_env(cfg["train"], counts.to(info.device), shards, info)
    mix = build.make_mixer(cfg, env)
    net, _ = build.make_model_and_criterion(cfg, env, mix)
    return cfg["train"], env, mix, net


def mixed_step(shards: Path, split: str, t: dict, env, mixer, model):
    """({stream: Batch} with images as loaded, MixedBatch, corrupt samples left out) of one
    step."""
    from ltpipe.pipeline.batch import Batch
    from ltpipe.pipeline.loader import make_loader
    from ltpipe.train.mixers.base import StepContext
    from ltpipe.train.step_keys import step_generator

    streams = tuple(mixer.streams)
    if split != "train" and streams != ("uniform",):
        raise ValueError(f"--split {split}: mixer {t['mixer']!r} reads streams {streams}, "
                         "which only the train split has")
    r = {"r": mixer.fg_r} if hasattr(mixer, "fg_r") else {}
    loader = make_loader(str(shards), split=split, batch_size=t["batch_size"], streams=streams,
                         device=env.device.type, preset=t["preset"], image_size=t["image_size"],
                         seed=t["seed"], num_threads=2, py_workers=1,
                         skip_corrupt=t["skip_corrupt"], **r)
    step = next(iter(loader))
    shown = {k: Batch(b.images.clone(), b.labels, b.index, b.meta) for k, b in step.items()}
    epoch = EPOCHS - 1
    ctx = StepContext(epoch, EPOCHS, 0, env.class_counts,
                      step_generator(t["seed"], epoch, 0, 0, env.device), model=model)
    if hasattr(mixer, "force_ot"):
        mixer.force_ot = True  # OTmix: show the OT pairing, not its CMO fallback
    model.train()
    if hasattr(mixer, "refresh_confusion"):
        # OTmix: F̂ from the preview's own batch. The model is untrained, so a pass over the
        # whole confusion split (most of the preview's time) would show nothing more.
        mixer.refresh_confusion(model, epoch, steps=[step])
    else:
        mixer.on_epoch_start(epoch, ctx)
    mixed = mixer(step, ctx)
    skipped = int(loader.skipped)
    del loader
    return shown, mixed, skipped


# ---------------------------------------------------------------- drawing

def to_pil(image, meta):
    """[3,H,W] normalized float (any memory format) -> RGB PIL image, TILE x TILE."""
    import numpy as np
    import torch
    from PIL import Image

    from ltpipe.train.mixers.view_aug import loader_normalization

    mean, std = loader_normalization(meta)
    x = image.detach().float().cpu().contiguous()
    if x.is_floating_point() and x.abs().max() <= 16:  # normalized floats (not uint8 pixels)
        x = x * x.new_tensor(std)[:, None, None] + x.new_tensor(mean)[:, None, None]
        x = x * 255
    arr = x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    small = pil.width < TILE and pil.height < TILE
    return pil.resize((TILE, TILE), Image.NEAREST if small else Image.BILINEAR)


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def tiles(shown: dict, mixed, classes: tuple[str, ...]) -> tuple[list, int]:
    """([(PIL image, caption line 1, caption line 2)] in grid order, tiles per sample)."""
    names = list(shown)
    first = shown[names[0]]
    b = len(first)
    pairs = mixed.extras.get("pairs")  # OTmix: background row of every output row
    lam = mixed.lam.float().cpu().tolist()
    y_a, y_b = mixed.y_a.cpu().tolist(), mixed.y_b.cpu().tolist()
    # SMC's rows are views: its own augmentation runs after the mix, so the tile differs from
    # the two inputs beside it by more than the paste
    role = "mixed, augmented view" if mixed.extras.get("views") else "mixed"
    out = []
    for i in range(b):
        if len(names) > 1:
            for k, name in enumerate(names[:2]):
                batch = shown[name]
                j = int(pairs[i]) if (k == 0 and pairs is not None) else i
                label = int(batch.labels[j])
                out.append((to_pil(batch.images[j], batch.meta), ROLES.get(name, name),
                            _short(classes[label])))
        caption = f"lam={lam[i]:.2f} {_short(classes[y_a[i]], 9)}/{_short(classes[y_b[i]], 9)}"
        out.append((to_pil(mixed.images[i], first.meta), role, caption))
    return out, 3 if len(names) > 1 else 1


def reading_note(mixer) -> str:
    """The header's second line: what λ is, and why pasted patches may show no object."""
    note = "lam = bg label share"
    box = getattr(mixer, "box", None)
    if box is not None:  # CutMix-style mixers paste a random box cut from the foreground image
        note += "; a random fg patch, " + ("one box per batch" if box == "batch" else "a box each")
    return note


def draw_grid(items: list, per_sample: int, n: int, title: str, note: str = ""):
    from PIL import Image, ImageDraw, ImageFont

    width, height = grid_size(n, per_sample)
    cols = width // TILE
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    draw.text((4, 3), title, fill="black", font=font)
    draw.text((4, 17), note, fill="dimgray", font=font)
    for k, (image, line1, line2) in enumerate(items):
        x, y = (k % cols) * TILE, HEADER + (k // cols) * (TILE + CAPTION)
        grid.paste(image, (x, y))
        draw.text((x + 3, y + TILE + 1), line1, fill="black", font=font)
        draw.text((x + 3, y + TILE + 14), line2, fill="black", font=font)
    return grid


def write_png(image, out: Path) -> Path:
    """Write by a temporary name and a rename: a grid is whole or absent."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def make_preview(shards: Path, mixer: str, out: Path, *, n: int = 8, split: str = "train",
                 seed: int = 0, device: str = "cpu", preset: str | None = None,
                 image_size: int | None = None, model: str = "resnet8",
                 mixer_opts: dict | None = None, skip_corrupt: bool = False) -> tuple[Path, int]:
    """Write the grid PNG; returns (its path, the corrupt samples left out, 0 unless
    ``skip_corrupt``). Bad input raises a one-line ValueError."""
    import torch

    from ltpipe.pipeline.loader_args import natural_preset
    from ltpipe.shards.format import load_manifest

    if n <= 0:
        raise ValueError(f"--n: must be a positive integer, got {n}")
    from ltpipe.pipeline.values import IMAGE_SIDE, SEED

    for option, rule, value in (("--image-size", IMAGE_SIDE, image_size), ("--seed", SEED, seed)):
        if value is not None and rule.problem(value):
            raise ValueError(f"{option}: {rule.problem(value)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (use --device cpu)")
    # before the step: a refused --out costs no loading
    check_png_out(out, shards, "--out", "ltpipe preview")
    manifest = load_manifest(shards)
    preset = preset or natural_preset(manifest, split)[0]
    image_size = image_size or (32 if preset == "cifar" else 224)
    t, env, mix, net = build_parts(shards, mixer, n, device, preset, image_size, model, seed,
                                   mixer_opts or {}, skip_corrupt)
    shown, mixed, skipped = mixed_step(shards, split, t, env, mix, net)
    items, per_sample = tiles(shown, mixed, manifest.classes)
    title = f"{mixer} · {split} · {' + '.join(shown)} · seed {seed}"
    if skipped:
        title += f" · {skipped} corrupt left out"
    image = draw_grid(items, per_sample, len(shown[next(iter(shown))]), title, reading_note(mix))
    return write_png(image, out), skipped


class PreviewCommand(click.Command):
    """Usage errors (a bad --n, no SHARDS) as one line, as `ltpipe train` and `ltpipe shard`
    print them, not click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(exc.format_message())


@click.command(cls=PreviewCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shards", type=click.Path(path_type=Path))
@click.option("--mixer", required=True, help="A registered mixer: none, cmo, smc, otmix, ...")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG to write.")
@click.option("--n", default=8, show_default=True, help="Samples (one row or tile each).")
@click.option("--split", default="train", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--preset", type=click.Choice(["cifar", "imagenet"]),
              help="Augmentation preset (default: cifar for images <= 64 px, else imagenet).")
@click.option("--image-size", type=int, help="Training image size (default: the preset's).")
@click.option("--model", default="resnet8", show_default=True,
              help="Freshly built model for mixers that read one (OTmix features, M2m's f).")
@click.option("--mixer-opt", multiple=True, metavar="KEY=VALUE", help="Mixer param (TOML value).")
@click.option("--skip-corrupt", is_flag=True,
              help="Leave corrupt samples out (and say how many) instead of refusing the split.")
def preview(shards, mixer, out, n, split, seed, device, preset, image_size, model, mixer_opt,
            skip_corrupt):
    """Write a PNG grid of background, foreground and mixed images from SHARDS."""
    from ltpipe.train.config import parse_assignments

    try:
        opts = parse_assignments(mixer_opt, "--mixer-opt")
        path, skipped = make_preview(shards, mixer, out, n=n, split=split, seed=seed,
                                     device=device, preset=preset, image_size=image_size,
                                     model=model, mixer_opts=opts, skip_corrupt=skip_corrupt)
    except (ValueError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    click.echo(f"wrote {path}" + (f" ({skipped} corrupt samples of {split} left out)"
                                  if skipped else ""))
