"""Images/s of the whole training step per mixer: mixer + forward + loss + backward + SGD step.

The step is ltpipe.train.loop.train_step with the real model, mixer, criterion and optimizer;
the input batches are device-resident (fp16 under mixed precision, as the loader hands them
over), so the figure isolates the step from the loader (bench the loader separately). Mixers
are timed in interleaved rounds with CUDA events after warm-up; the overhead of each mixer is
reported against ``none`` (the project's target for CMO: ≤ 1 % of the step; the paper: +3.9 %).

GPU (the issue's setting):
    python -m ltpipe.bench.train_step --device cuda --model resnet50 --batch-size 256 \
        --image-size 224 --precision bf16 --channels-last --mixers none,cmo
CPU fallback (tiny, labelled cpu):
    python -m ltpipe.bench.train_step

Mixer params: ``--mixer-opt cmo.prob=1.0`` (TOML values). Mixers needing shards (OTmix's
confusion split, M2m's classifier) take them the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from ltpipe.bench.harness import ScriptParser, time_cuda, write_result
from ltpipe.pipeline.batch import Batch
from ltpipe.train.config import parse_scalar
from ltpipe.train.dist import DistInfo
from ltpipe.train.loop import make_autocast, train_step
from ltpipe.train.mixers.base import StepContext
from ltpipe.train.step_keys import step_generator


def fake_streams(names, batch, size, classes, device, dtype, channels_last, gen):
    """{stream: Batch} of random images [B,3,S,S] and labels, resident on the device."""
    out = {}
    for name in names:
        x = torch.randn(batch, 3, size, size, generator=gen, device=device).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (batch,), generator=gen, device=device)
        out[name] = Batch(x, y, torch.arange(batch, device=device))
    return out


def class_counts(classes: int, device) -> torch.Tensor:
    """A ρ = 100 exponential profile (the shape of CIFAR-LT) over ``classes``."""
    k = torch.arange(classes, dtype=torch.float64)
    return torch.floor(500 * 100.0 ** (-k / max(classes - 1, 1))).long().clamp_min(1).to(device)


def build_step(mixer_name: str, args, device, mixer_params: dict):
    from ltpipe.train import build

    t = {"image_size": args.image_size, "batch_size": args.batch_size, "epochs": 10,
         "seed": 0, "model": args.model, "loss": args.loss, "reweight": "none",
         "drw_epoch": -1, "channels_last": args.channels_last, "lr": 0.1, "momentum": 0.9,
         "wd": 5e-4, "nesterov": False, "warmup": 0, "schedule": "constant", "milestones": [],
         "gamma": 0.1}
    cfg = {"train": {**t, "mixer": mixer_name}, "mixer": {mixer_name: mixer_params},
           "loss": {}, "aux": {}}
    info = DistInfo(0, 1, 0, device)
    env = build.make_env(t, class_counts(args.classes, device), args.shards, info)
    mixer = build.make_mixer(cfg, env)
    model, criterion = build.make_model_and_criterion(cfg, env, mixer)
    opt, sched = build.make_optimizer(t, model, criterion, steps_per_epoch=1000)
    on_cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and args.precision == "fp16")
    autocast = make_autocast(device, args.precision)
    in_dtype = torch.float16 if on_cuda and args.precision != "fp32" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    streams = fake_streams(mixer.streams, args.batch_size, args.image_size, args.classes, device,
                           in_dtype, args.channels_last, gen)
    net = torch.compile(model) if args.compile else model
    state = {"step": 0}

    def step():
        s = state["step"]
        state["step"] += 1
        ctx = StepContext(5, 10, s, env.class_counts, step_generator(0, 5, s, 0, device),
                          model=model, aux={})
        train_step(model=net, mixer=mixer, criterion=criterion, optimizer=opt, scheduler=sched,
                   scaler=scaler, streams=streams, ctx=ctx, autocast=autocast)

    mixer.on_epoch_start(5, StepContext(5, 10, 0, env.class_counts,
                                        step_generator(0, 5, 0, 0, device, 1), model=model))
    return step


def main(argv=None) -> int:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="default: resnet50 on cuda, resnet8 on cpu")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--loss", default="ce")
    p.add_argument("--mixers", default="none,cmo")
    p.add_argument("--mixer-opt", action="append", default=[], metavar="MIXER.KEY=VALUE")
    p.add_argument("--shards", default=None, help="shard dir for mixers that read one")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--runs", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    defaults = dict(model=("resnet50", "resnet8"), batch_size=(256, 64), image_size=(224, 32),
                    classes=(1000, 100), warmup=(10, 3), runs=(30, 10), channels_last=(True, False))
    for key, (gpu, cpu) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, gpu if cuda else cpu)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    params_of = {m: {} for m in args.mixers.split(",")}
    for item in args.mixer_opt:
        target, _, value = item.partition("=")
        mixer, _, key = target.partition(".")
        params_of.setdefault(mixer, {})[key] = parse_scalar(value)
    steps = {m: build_step(m, args, device, params_of[m]) for m in params_of}
    ms = {m: [] for m in steps}
    for _ in range(args.rounds):  # interleave mixers so clock/thermal drift hits all alike
        for m, fn in steps.items():
            ms[m] += time_cuda(fn, warmup=args.warmup, runs=args.runs)
    results = {}
    for m, times in ms.items():
        med = statistics.median(times)
        results[m] = {"ms_per_step_median": med, "ms_per_step_mean": statistics.fmean(times),
                      "ms_per_step_std": statistics.pstdev(times),
                      "images_per_s": args.batch_size / med * 1e3, "steps": len(times)}
    if "none" in results:
        base = results["none"]["ms_per_step_median"]
        for m in results:
            results[m]["overhead_vs_none_pct"] = (results[m]["ms_per_step_median"] / base - 1) * 100
    for m, r in results.items():
        overhead = r.get("overhead_vs_none_pct")
        extra = f"  {overhead:+.2f}% vs none" if overhead is not None else ""
        print(f"{m:10s} {r['ms_per_step_median']:9.2f} ms/step  "
              f"{r['images_per_s']:9.0f} img/s{extra}")
    params = {k: getattr(args, k) for k in ("model", "batch_size", "image_size", "classes",
                                            "precision", "channels_last", "compile", "loss",
                                            "warmup", "runs", "rounds")}
    params["mixer_params"] = params_of
    params["torch_threads"] = torch.get_num_threads()
    params["command"] = " ".join(["python", "-m", "ltpipe.bench.train_step", *sys.argv[1:]])
    path = write_result("train_step", params, results, out_dir=args.out,
                        device=None if cuda else "cpu")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
