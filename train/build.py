"""Builders: the resolved config's sections -> loaders, model, mixer, criterion, optimizer.

This is the one layer that reads the config dict; everything it builds takes
plain keyword arguments. Method names stay in the registries.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ltpipe.pipeline.loader_args import loader_threads, local_world_size
from ltpipe.train.dist import DistInfo, gather_objects
from ltpipe.train.losses.aux import build_aux_term
from ltpipe.train.losses.criterion import Criterion
from ltpipe.train.losses.per_sample import NEEDS_COSINE, NEEDS_COUNTS, build_base_loss
from ltpipe.train.losses.weights import ClassWeights
from ltpipe.train.mixers.base import MixerEnv
from ltpipe.train.mixers.registry import build_mixer, mixer_class
from ltpipe.train.models import build_model
from ltpipe.train.schedule import LRSchedule

log = logging.getLogger(__name__)


def loader_resources(table: dict) -> dict:
    """[loader] -> make_loader kwargs; 0 threads/workers = automatic (``loader_threads``)."""
    threads, workers = loader_threads(table["threads"], table["py_workers"])
    return dict(num_threads=threads, py_workers=workers, prefetch=table["prefetch"],
                hw_decoder_load=float(table["hw_decoder_load"]),
                cpu_decode=tuple(table["cpu_decode"]), q_decode=table["q_decode"],
                images=table["images"], q_cache_gb=table["q_cache_gb"],
                q_cache_side=table["q_cache_side"])


def scan_once_per_node(shards: Path, info: DistInfo) -> None:
    """The ranks of a node run the corrupt-sample scan a share of the tars each, filling the
    cache, and then read the whole result from it when they open the splits: each would
    otherwise scan every tar itself, all at once on the same cores (and the gather waits for
    every share). The cache is keyed by each tar's SHA-256, so the ranks also share the digests
    they computed: no rank reads every tar again to look its scan up."""
    from ltpipe.pipeline.shardset import scan_for_corrupt
    from ltpipe.shards.shardscan import remember_digests

    per_node = local_world_size(info.world)
    digests = []
    try:
        digests = scan_for_corrupt(shards, info.local_rank, max(per_node, info.local_rank + 1))
    except Exception as exc:  # noqa: BLE001 - opening the split reports it, with its file
        log.warning("rank %d: the corrupt-sample scan before opening the splits failed (%s); "
                    "each split is scanned when it is opened", info.rank, exc)
    for theirs in gather_objects(digests, info):  # also the barrier: every share is scanned
        remember_digests(theirs)


def make_loaders(shards: Path, t: dict, mixer, info: DistInfo, epoch: int,
                 resources: dict | None = None):
    """(train loader built from the mixer's declaration, val loader or None). The mixer says
    which streams it reads, Q's exponent and its mix plan (plan-aware Q decodes only the boxes
    it pastes; pipeline/q_decode.py). ``resources``: the ``loader_resources`` kwargs (None:
    make_loader's defaults)."""
    from ltpipe.pipeline.loader import make_loader

    if info.distributed:
        scan_once_per_node(shards, info)
    resources = dict(resources or {})
    cpu_decode = resources.pop("cpu_decode", ())  # each loader takes the streams it has
    raw = resources.pop("images", "normalized") == "uint8"
    model_input = loader_dtype(info.device, t["precision"])

    def on_cpu(names: tuple[str, ...]) -> dict:
        return {"cpu_decode": tuple(s for s in cpu_decode if s in names)}

    common = dict(device=info.device.type, preset=t["preset"], image_size=t["image_size"],
                  dtype=torch.uint8 if raw else model_input,
                  channels_last=t["channels_last"], seed=t["seed"], rank=info.rank,
                  world=info.world, skip_corrupt=t["skip_corrupt"], **resources)
    streams = tuple(mixer.streams)
    train = make_loader(str(shards), split="train", batch_size=t["batch_size"], mixer=mixer,
                        epoch=epoch, **common, **on_cpu(streams))
    try:
        val = make_loader(str(shards), split="val", batch_size=t["batch_size"],
                          streams=("uniform",), epoch=0, **common, **on_cpu(("uniform",)))
    except ValueError as exc:
        if "no split" not in str(exc):
            raise
        val = None
    if raw:  # pixels leave DALI as uint8; normalised here, on the device, before the mixer
        from ltpipe.pipeline.normalize import NormalizedLoader

        train = NormalizedLoader(train, model_input, compile=t["compile"])
        val = None if val is None else NormalizedLoader(val, model_input, compile=t["compile"])
    return train, val


def loader_dtype(device: torch.device, precision: str) -> torch.dtype:
    """Images reach the model in fp16 under CUDA mixed precision (half the bytes), else fp32."""
    return torch.float16 if device.type == "cuda" and precision != "fp32" else torch.float32


def check_class_counts(t: dict, class_counts: torch.Tensor, shards) -> None:
    """A class with no training samples (n_k = 0) is a one-line ValueError at build time
    (METHODS.md, Empty classes) when the loss (NEEDS_COUNTS), the re-weighting or the mixer's Q
    streams (WEIGHTED_STREAMS) use the counts: they would train on max(n_k, 1), which gives that
    class a prior of about 1/N (LA/BS), the largest margin (LDAM) and the largest weight (DRW).
    CE/focal, no re-weighting and a P-only mixer still run."""
    empty = torch.nonzero(class_counts.cpu() == 0).flatten().tolist()
    if not empty:
        return
    users = []
    if t["loss"] in NEEDS_COUNTS:
        users.append(f"loss {t['loss']!r}")
    if t["reweight"] != "none":
        users.append(f"reweight {t['reweight']!r}")
    from ltpipe.pipeline.loader_args import WEIGHTED_STREAMS

    streams = sorted(WEIGHTED_STREAMS & set(mixer_class(t["mixer"]).streams))
    if streams:
        users.append(f"mixer {t['mixer']!r} (stream {', '.join(streams)})")
    if users:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        verb = "uses" if len(users) == 1 else "use"
        raise ValueError(f"{shards}: class {empty[0]}{more} has no training samples, and "
                         f"{' and '.join(users)} {verb} the class counts "
                         "(train/METHODS.md, empty classes)")


def make_env(t: dict, class_counts: torch.Tensor, shards: Path, info: DistInfo) -> MixerEnv:
    check_class_counts(t, class_counts, shards)
    return MixerEnv(class_counts=class_counts, device=info.device, image_size=t["image_size"],
                    batch_size=t["batch_size"], epochs=t["epochs"], seed=t["seed"],
                    shards=str(shards), rank=info.rank, world=info.world,
                    skip_corrupt=bool(t.get("skip_corrupt", False)))


def make_mixer(cfg: dict, env: MixerEnv):
    name = cfg["train"]["mixer"]
    return build_mixer(name, env=env, **cfg["mixer"].get(name, {})).to(env.device)


def make_model_and_criterion(cfg: dict, env: MixerEnv, mixer):
    """The classifier with every aux head attached, and the criterion that uses them."""
    t = cfg["train"]
    torch.manual_seed(t["seed"])  # identical initial weights on every rank and on resume
    model = build_model(t["model"], env.num_classes, cosine_classifier=t["loss"] in NEEDS_COSINE)
    aux = {}
    for name in getattr(mixer, "aux_terms", ()):
        term = build_aux_term(name, env, model.feature_dim, **cfg["aux"].get(name, {}))
        head = term.make_head()
        if head is not None:
            model.heads[term.head_name] = head
        aux[name] = term
    base = build_base_loss(t["loss"], env.class_counts, **cfg["loss"].get(t["loss"], {}))
    if getattr(base, "reads_label_prior", False) and not hasattr(mixer, "label_prior"):
        raise ValueError(f"loss {t['loss']!r}: prior='mixed' needs a mixer that declares the "
                         f"label distribution of its batches (smc, cmo, otmix); mixer "
                         f"{t['mixer']!r} does not")
    drw = t["drw_epoch"] if t["drw_epoch"] >= 0 else None
    weights = ClassWeights(t["reweight"], env.class_counts, epochs=t["epochs"], drw_epoch=drw)
    model.to(env.device)
    if t["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return model, Criterion(base, weights, aux).to(env.device)


def make_optimizer(t: dict, model: torch.nn.Module, criterion: torch.nn.Module,
                   steps_per_epoch: int):
    seen, params = set(), []
    # an aux term may share a head
    for p in list(model.parameters()) + list(criterion.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    opt = torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["wd"],
                          nesterov=bool(t["nesterov"]) and t["momentum"] > 0)
    schedule = LRSchedule(steps_per_epoch, t["epochs"], t["warmup"], t["schedule"],
                          tuple(t["milestones"]), t["gamma"])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)
