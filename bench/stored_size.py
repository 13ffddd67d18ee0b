"""Stored size: what training on a copy stored smaller (``ltpipe shard --max-size``) costs in
accuracy.

Trains each config on the data as stored and on each ``--max-sizes`` copy (DIR-PX beside it),
with the same seeds, and reports every copy's accuracy minus the original's, paired by seed
(mean ± standard error), as a table, a JSON result (schema of ltpipe.bench.harness) and a PNG.
Runs go through bench/fidelity.py's runner, so finished runs are reused.

The CPU proxy for iNat stored at 384 px and trained at 224 (bench/README.md, Stored size): the
``large`` synthetic profile (long side 72–128 px) trained at 32 px with the ImageNet
augmentations, and a copy at 55 px: 384 / 224 = 55 / 32, and 55 px keeps about half the long
side, as 384 does of iNat's 800.

    python -m ltpipe.bench.stored_size --generate out/large --size large --max-sizes 55 \\
        --runs bs:cmo --seeds 0,1,2 --epochs 12 -- --preset imagenet --image-size 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltpipe.bench import fidelity
from ltpipe.bench.harness import ScriptParser, add_shard_source_args, positive_ints, write_result
from ltpipe.bench.loader import shard_dirs, stored_stats

ORIGINAL = "original"


def label(key: str) -> str:
    """shard_dirs' key ("" or "px55") as a row name ("original", "max-size 55")."""
    return ORIGINAL if not key else f"max-size {key[2:]}"


def train_all(dirs: dict[str, Path], specs: list[str], seeds: list[int], args) -> dict:
    """{stored: {spec: [final.json per seed]}}, one run per (stored, spec, seed)."""
    out = {}
    for key, shards in dirs.items():
        run_args = argparse.Namespace(**{**vars(args), "shards": shards})
        out[label(key)] = {}
        for spec in specs:
            tag = f"{fidelity.run_tag(spec)}-{key or 'orig'}"
            out[label(key)][spec] = [
                fidelity.train_one(spec, seed, run_args, args.workdir / f"{tag}-s{seed}")
                for seed in seeds]
    return out


def compare(per_stored: dict) -> tuple[dict, dict]:
    """(summary {stored: {spec: metric stats}}, costs {stored: {spec: paired copy − original}})."""
    summary = {stored: fidelity.summarize(runs) for stored, runs in per_stored.items()}
    costs = {stored: {spec: fidelity.paired(summary[ORIGINAL][spec], row[spec]) for spec in row}
             for stored, row in summary.items() if stored != ORIGINAL}
    return summary, costs


def report(summary: dict, costs: dict) -> str:
    lines = []
    for stored, rows in summary.items():
        lines += [f"-- {stored}", fidelity.table(rows)]
    for stored, row in costs.items():
        for spec, diff in row.items():
            cells = ", ".join(f"{m} {v['mean']:+.1f} ± {v['se']:.1f}" for m, v in diff.items())
            lines.append(f"{spec}, {stored} − original, paired by seed: {cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ScriptParser(__file__, __doc__)
    add_shard_source_args(p, "large", "synthetic profile for --generate")
    p.add_argument("--max-sizes", type=positive_ints, required=True,
                   help="copies to compare, long side <= PX (DIR-PX; written with --generate)")
    p.add_argument("--runs", default="bs:cmo", help="configs, as in fidelity.py")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipe", default="synthetic")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workdir", type=Path, default=fidelity.WORK / "runs" / "stored-size")
    p.add_argument("--out", type=Path, default=None, help="result dir (bench/results)")
    p.add_argument("--name", default="stored-size-accuracy")
    p.add_argument("--progress", action="store_true")
    p.add_argument("extra", nargs="*", help="more `ltpipe train` options, after --")
    args = p.parse_args(argv)
    specs = [s.strip() for s in args.runs.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        raise SystemExit("ltpipe.bench.stored_size: --seeds: at least two, to pair them")
    for spec in specs:
        fidelity.parse_config(spec)
    dirs = shard_dirs(args)
    summary, costs = compare(train_all(dirs, specs, seeds, args))
    print(report(summary, costs))
    params = {"shards": {label(k): str(v) for k, v in dirs.items()},
              "stored": {label(k): stored_stats(v) for k, v in dirs.items()},
              "recipe": args.recipe, "epochs": args.epochs or "recipe", "seeds": seeds,
              "runs": specs, "extra": args.extra,
              "command": " ".join(["python", "-m", "ltpipe.bench.stored_size", *sys.argv[1:]])}
    results = {stored: {"summary": summary[stored], "cost": cost} for stored, cost in costs.items()}
    path = write_result(args.name, params, results, {ORIGINAL: summary[ORIGINAL]},
                        out_dir=args.out, device="cpu" if args.device == "cpu" else None)
    png = path.with_suffix(".png")
    flat = {f"{spec} ({stored})": row[spec] for stored, row in summary.items() for spec in row}
    fidelity.plot(flat, png, f"{args.recipe}, {', '.join(map(label, dirs))}, seeds {seeds} "
                             f"({args.device})")
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
