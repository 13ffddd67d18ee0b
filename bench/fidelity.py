"""Fidelity: does minority mixing help the tail? CE vs CE+CMO (and more) over seeds.

Trains every named config for every seed with ``ltpipe train`` (in process), then reports the
mean ± std (over seeds) of top-1 and Many/Medium/Few, as a table, a JSON result
(bench/results/fidelity-<device>.json, schema of ltpipe.bench.harness) and a PNG.

A config is ``LOSS[-REWEIGHT][(key=value;...)]:MIXER[@key=value;key=value]``, e.g. ``ce:none``,
``ce:cmo``, ``bs:cmo``, ``ldam-drw:cmo``, ``ce:cmo@fg_r=1`` (mixer params, TOML values),
``la(prior="mixed"):smc@fg_r=0`` (loss params in parentheses), so new mixers (smc, otmix, m2m)
need no edit here. Finished runs (RUN/final.json) are reused.

    python -m ltpipe.bench.fidelity --runs ce:none,ce:cmo,bs:cmo,ldam-drw:cmo --seeds 0,1,2
    python -m ltpipe.bench.fidelity --data mnist5k --epochs 30 --runs bs:none,bs:cmo
    python -m ltpipe.bench.fidelity --device cuda --recipe synthetic --runs ce:none,ce:cmo,ce:smc
    python -m ltpipe.bench.fidelity --name fidelity-smc \
        --runs 'ce:none,la:none,la:smc@fg_r=0,la(prior="mixed"):smc@fg_r=0'

``--data`` picks the set: ``synthetic`` (the default, ``ltpipe shard synthetic``) or one of the
real-image sets of bench/real_lt.py (``digits``, ``mnist5k``, ``animals``: packaged images, cut
long-tailed with a balanced val split), written to out/<name>-lt on first use.

The check: a mixer's Few-class mean must exceed its baseline's (the same loss with
``none``, else ``ce:none``) by more than the seeds' spread (sum of the two stds). Each check
also records the differences paired by seed, with their standard errors (``paired``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ltpipe.bench.harness import ScriptParser

# shards and runs live where the command runs (a checkout's out/ and runs/ are ignored by git)
WORK = Path(".")
METRICS = ("top1", "many", "medium", "few")
REAL_SETS = ("digits", "mnist5k", "animals")  # ltpipe.bench.real_lt


def parse_config(spec: str) -> tuple[str, str, str, list[str], list[str]]:
    """'ldam-drw:cmo@fg_r=1;prob=1' -> ('ldam', 'drw', 'cmo', ['fg_r=1', 'prob=1'], []);
    'la(tau=0.5):smc' -> ('la', 'none', 'smc', [], ['tau=0.5'])."""
    head, _, opts = spec.partition("@")
    loss_part, sep, mixer = head.partition(":")
    loss_part, paren, loss_opts = loss_part.partition("(")
    if not sep or not loss_part or not mixer or (paren and not loss_opts.endswith(")")):
        raise SystemExit(f"--runs: expected LOSS[-REWEIGHT][(k=v;...)]:MIXER[@k=v;...], "
                         f"got {spec!r}")
    loss, _, reweight = loss_part.partition("-")
    return (loss, reweight or "none", mixer, [o for o in opts.split(";") if o],
            [o for o in loss_opts[:-1].split(";") if o])


def run_tag(spec: str) -> str:
    """A flat folder name for a config: 'ce:m2m@classifier="runs/g"' -> 'ce_m2m_classifier_runs_g'
    (a path-valued param must not become nested folders)."""
    tag = spec.replace(":", "_").replace("@", "_").replace(";", "_").replace("=", "")
    tag = tag.replace("(", "_").replace(")", "")
    return tag.replace('"', "").replace("'", "").replace("/", "_").replace("\\", "_")


def train_one(spec: str, seed: int, args, run_dir: Path) -> dict:
    """One `ltpipe train` run in a fresh process (an in-process series of runs would fork DALI
    workers from a process that already holds loader threads)."""
    done = run_dir / "final.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an unfinished earlier attempt: continue it
        cli = ["--resume", str(run_dir)]
    else:
        loss, reweight, mixer, opts, loss_opts = parse_config(spec)
        cli = [str(args.shards), "--out", str(run_dir), "--recipe", args.recipe, "--loss", loss,
               "--reweight", reweight, "--mixer", mixer, "--seed", str(seed),
               "--device", args.device]
        cli += [x for o in opts for x in ("--mixer-opt", o)]
        cli += [x for o in loss_opts for x in ("--loss-opt", o)]
        if args.epochs:
            cli += ["--epochs", str(args.epochs)]
        cli += list(args.extra)
    cli += ["--no-progress"] if not args.progress else []
    proc = subprocess.run([sys.executable, "-m", "ltpipe.train", *cli])
    if proc.returncode != 0 or not done.is_file():
        raise SystemExit(f"{spec} seed {seed}: ltpipe train failed (exit {proc.returncode})")
    return json.loads(done.read_text())


def summarize(per_seed: dict[str, list[dict]]) -> dict:
    out = {}
    for spec, results in per_seed.items():
        row = {}
        for m in METRICS:
            vals = np.array([r[m] for r in results if r[m] is not None], dtype=float)
            if not vals.size:  # the data set has no class in this group
                row[m] = {"mean": None, "std": None, "values": []}
                continue
            row[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1
                      else 0.0, "values": vals.tolist()}
        out[spec] = row
    return out


def few_check(summary: dict, base: str, method: str) -> dict | None:
    if base not in summary or method not in summary or summary[base]["few"]["mean"] is None:
        return None
    gain = summary[method]["few"]["mean"] - summary[base]["few"]["mean"]
    spread = summary[method]["few"]["std"] + summary[base]["few"]["std"]
    return {"base": base, "method": method, "few_gain": gain, "spread": spread,
            "passes": bool(gain > spread), "paired": paired(summary[base], summary[method])}


def paired(base: dict, method: dict) -> dict:
    """Per metric, method − base paired by seed: {"mean", "se"} (standard error of the mean
    difference; the seeds' shared data and init cancel, so it is tighter than the two stds)."""
    out = {}
    for m in METRICS:
        a, b = np.array(base[m]["values"]), np.array(method[m]["values"])
        if a.size != b.size or a.size < 2:  # a group missing in some seeds: nothing to pair
            continue
        d = b - a
        out[m] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size))}
    return out


def baseline_of(spec: str, specs: list[str]) -> str | None:
    """The same loss without mixing ("bs:none" for "bs:cmo"; "la:none" for "la(prior=...):smc"
    when "la(prior=...):none" is not run), else "ce:none"; None for a baseline itself."""
    loss_part, _, rest = spec.partition(":")
    if rest.split("@")[0] == "none":
        return None
    loss = loss_part.partition("(")[0]
    # BS is LA with τ = 1 (METHODS.md, Losses): either serves as the other's baseline
    same = None if "tau" in loss_part else {"la": "bs", "bs": "la"}.get(loss)
    for base in (f"{loss_part}:none", f"{loss}:none", same and f"{same}:none", "ce:none"):
        if base in specs:
            return base
    return None


def table(summary: dict) -> str:
    width = max([28, *map(len, summary)])  # loss and mixer params make long names
    lines = [f"{'config':{width}s}" + "".join(f"{m:>16s}" for m in METRICS)]
    for spec, row in summary.items():
        lines.append(f"{spec:{width}s}" + "".join(
            f"{row[m]['mean']:>9.1f} ± {row[m]['std']:<4.1f}" if row[m]["mean"] is not None
            else f"{'-':>16s}" for m in METRICS))
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(summary)
    width = 0.8 / max(len(specs), 1)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for i, spec in enumerate(specs):
        xs = np.arange(len(METRICS)) + i * width
        ax.bar(xs, [summary[spec][m]["mean"] or 0.0 for m in METRICS], width,
               yerr=[summary[spec][m]["std"] or 0.0 for m in METRICS], capsize=3, label=spec)
    ax.set_xticks(np.arange(len(METRICS)) + 0.4 - width / 2, ["All", "Many", "Medium", "Few"])
    ax.set_ylabel("val top-1 % (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: bars stay visible
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--data", default="synthetic", choices=["synthetic", *REAL_SETS],
                   help="data set (real ones: bench/real_lt.py)")
    p.add_argument("--shards", type=Path, default=None,
                   help="shard dir (default ./out/synthetic or ./out/<data>-lt, written if "
                        "missing)")
    p.add_argument("--runs", default="ce:none,ce:cmo,bs:cmo,ldam-drw:cmo")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipe", default="synthetic")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workdir", type=Path, default=WORK / "runs" / "fidelity")
    p.add_argument("--out", type=Path, default=None, help="result dir (bench/results)")
    p.add_argument("--name", default="fidelity", help="result name: <out>/<name>-<device>.json")
    p.add_argument("--progress", action="store_true")
    p.add_argument("extra", nargs="*", help="more `ltpipe train` options, after --")
    args = p.parse_args(argv)
    specs = [s.strip() for s in args.runs.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    for spec in specs:
        parse_config(spec)
    if args.shards is None:
        name = "synthetic" if args.data == "synthetic" else f"{args.data}-lt"
        args.shards = WORK / "out" / name
    if not (args.shards / "manifest.json").is_file():
        if args.data == "synthetic":
            from ltpipe.shards.write import write_shards

            write_shards("synthetic", args.shards, progress=False)
        else:
            from ltpipe.bench import real_lt

            real_lt.make_shards(args.data, WORK / "out" / args.data, args.shards)
    per_seed = {}
    for spec in specs:
        tag = run_tag(spec)
        per_seed[spec] = []
        for seed in seeds:
            print(f"== {spec} seed {seed}", flush=True)
            per_seed[spec].append(train_one(spec, seed, args, args.workdir / f"{tag}-s{seed}"))
    summary = summarize(per_seed)
    checks = [c for s in specs if (c := few_check(summary, baseline_of(s, specs), s))]
    print(table(summary))
    for c in checks:
        verdict = "PASS" if c["passes"] else "FAIL"
        print(f"{verdict}: {c['method']} Few {c['few_gain']:+.1f} over {c['base']} "
              f"(seed spread {c['spread']:.1f})")
        diffs = ", ".join(f"{m} {v['mean']:+.1f} ± {v['se']:.1f}" for m, v in c["paired"].items())
        print(f"  paired by seed (mean ± standard error): {diffs}")
    from ltpipe.bench.harness import write_result

    params = {"data": args.data, "shards": str(args.shards), "recipe": args.recipe,
              "epochs": args.epochs or "recipe",
              "seeds": seeds, "runs": specs, "extra": args.extra,
              "command": " ".join(["python", "-m", "ltpipe.bench.fidelity", *sys.argv[1:]])}
    path = write_result(args.name, params, {"summary": summary, "checks": checks},
                        out_dir=args.out, device="cpu" if args.device == "cpu" else None)
    png = path.with_suffix(".png")
    plot(summary, png,
         f"{args.recipe} on {args.data} ({args.shards.name}), seeds {seeds} ({args.device})")
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
