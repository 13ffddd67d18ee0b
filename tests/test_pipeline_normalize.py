"""uint8 out of the loader, normalised on the consumer's side (pipeline/normalize.py): the same
model input as the loader's own normalisation, for both loaders, both presets, P, Q and Q's tiles,
within float rounding; and the trainer's ``[loader] images = "uint8"`` trains the same run."""

import pytest
import torch

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.mix_plan import PlanSpec
from ltpipe.pipeline.normalize import NormalizedLoader, normalize_images
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards.write import write_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("norm") / "s"
    write_shards("synthetic", out, classes=4, max_per_class=20, image_size=48, seed=0,
                 progress=False)
    return out


def steps(loader, n=2):
    out = []
    for step in loader:
        out.append(step)
        if len(out) == n:
            return out
    return out


def test_normalize_images_is_the_imagenet_map():
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    want = (x.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_images(x), want, atol=1e-6)
    assert normalize_images(x, torch.float16).dtype == torch.float16
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert normalize_images(nhwc).is_contiguous(memory_format=torch.channels_last)
    y = torch.randn(2, 3, 4, 4)
    assert normalize_images(y) is y  # already model input


@pytest.mark.parametrize("preset,channels_last", [("cifar", False), ("imagenet", True)])
def test_dali_uint8_then_normalized_equals_dali_normalized(shards, preset, channels_last):
    kw = dict(batch_size=8, preset=preset, image_size=32, seed=3, channels_last=channels_last)
    raw = steps(NormalizedLoader(make_loader(shards, dtype=torch.uint8, **kw), torch.float32))
    ref = steps(make_loader(shards, **kw))
    for a, b in zip(raw, ref):
        for name in ("uniform", "minority"):
            assert torch.equal(a[name].index, b[name].index)  # the same draws, crops and flips
            assert torch.allclose(a[name].images, b[name].images, atol=1e-5), name


def test_planned_q_tiles_come_out_normalized_too(shards):
    plan = PlanSpec(prob=1.0, mix_schedule="always", epochs=1, alpha=1.0, per_sample=False)
    kw = dict(batch_size=8, preset="imagenet", image_size=32, seed=5, mix_plan=plan,
              q_decode="tiles", streams=("uniform", "minority"))
    raw_loader = make_loader(shards, dtype=torch.uint8, **kw)
    raw = steps(NormalizedLoader(raw_loader, torch.float32))
    ref = steps(make_loader(shards, **kw))
    for a, b in zip(raw, ref):
        ta, tb = a["minority"].tiles, b["minority"].tiles
        assert torch.equal(ta.boxes, tb.boxes)
        assert ta.pixels.dtype == torch.float32
        assert torch.allclose(ta.pixels, tb.pixels, atol=1e-5)
    assert len(raw_loader) == len(NormalizedLoader(raw_loader, torch.float32))


def test_torch_reference_uint8_then_normalized_equals_its_normalized(shards):
    kw = dict(batch_size=8, preset="cifar", streams=("uniform",), split="val", num_workers=0)
    raw = steps(make_torch_loader(shards, dtype=torch.uint8, **kw))
    ref = steps(make_torch_loader(shards, **kw))
    for a, b in zip(raw, ref):
        assert a["uniform"].images.dtype == torch.uint8
        assert torch.allclose(normalize_images(a["uniform"].images), b["uniform"].images,
                              atol=1e-5)


def test_the_trainer_with_uint8_images_trains_the_same_run(shards, tmp_path):
    """`--loader-opt images="uint8"`: the same draws and, up to float rounding, the same input,
    so one epoch of CMO gives the same loss and accuracy."""
    from ltpipe.train.train_cli import resolve_run, run

    opts = dict(reweight=None, model="resnet8", epochs=1, batch_size=8, lr=None, wd=None,
                momentum=None, warmup=0, schedule=None, milestones=None, gamma=None,
                drw_epoch=None, device="cpu", seed=None, precision=None, channels_last=None,
                compile=None, eval_every=None, ckpt_every=None, preset=None, image_size=32,
                fg_r=None, otmix_mode=None, otmix_confusion_split=None, m2m_classifier=None,
                mixer="cmo", loss="ce")
    import json

    finals, losses = {}, {}
    for images in ("normalized", "uint8"):
        cfg, shard_dir, run_dir = resolve_run(shards, tmp_path / images, "synthetic", None,
                                              ('mix_schedule="always"', "prob=1.0"), (),
                                              dict(opts), (f'images="{images}"',))
        assert cfg["loader"]["images"] == images
        finals[images] = run(cfg, shard_dir, run_dir, resume=False, progress=False)
        losses[images] = json.loads((run_dir / "metrics.jsonl").read_text())["train_loss"]
    assert finals["normalized"]["per_class"] == finals["uint8"]["per_class"]
    assert losses["normalized"] == pytest.approx(losses["uint8"], rel=1e-4)


def test_the_trainer_builds_a_uint8_loader_and_normalises_its_steps(shards):
    from ltpipe.shards.format import load_manifest
    from ltpipe.train import build
    from ltpipe.train.config import resolve
    from ltpipe.train.dist import DistInfo

    cfg = resolve({}, {"image_size": 32, "batch_size": 8}, {}, loader_overrides={"images": "uint8"})
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    counts = torch.tensor(load_manifest(shards).split("train").class_counts)
    mixer = build.make_mixer(cfg, build.make_env(cfg["train"], counts, shards, info))
    train, val = build.make_loaders(shards, cfg["train"], mixer, info, 0,
                                    build.loader_resources(cfg["loader"]))
    assert isinstance(train, NormalizedLoader) and isinstance(val, NormalizedLoader)
    assert next(iter(train.loader))["uniform"].images.dtype == torch.uint8
    assert next(iter(train))["uniform"].images.dtype == torch.float32
    assert next(iter(val))["uniform"].images.dtype == torch.float32
