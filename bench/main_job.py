"""Epoch time and data wait of the README's main job on the CPU, with older commits as baselines.

The main job is ``ltpipe shard synthetic DIR`` then ``ltpipe train DIR --recipe synthetic --mixer
cmo``. This script shards the embedded synthetic default into a temporary folder (or reads
``--shards``), then runs the job's training for ``--epochs`` epochs, ``--reps`` times, each run a
fresh ``python -m ltpipe.train`` process on the CPU, as a user runs it (torch's default threads).
From each run's metrics.jsonl it takes the epoch time (``seconds``: the training steps of an
epoch, without evaluation and checkpoints) and the loader wait (``data_wait_ms_per_step``):

    epoch_s        median over epochs 1.. of a run (epoch 0 also builds the DALI pipeline and
                   warms caches; it is reported apart as first_epoch_s)
    data_wait_ms   the same median of the wait per step

Each figure is the median over runs, with the runs' min and max; against each baseline, the
ratio of the medians and the ratios within rounds. ``--baseline REF`` (repeatable)
also measures a commit of this repository: ``git archive REF`` into the temporary folder, a venv
that sees this interpreter's packages, ``pip install --no-deps -e`` of that copy. The trees then
run in alternation (this checkout first in even rounds, the baseline first in odd ones), so the
load of a shared machine falls on both alike; the load average is recorded around every run.
While other training processes share the cores, an epoch here can take ten times as long (their
OpenMP threads and these wait on each other): compare trees by the ratios within rounds.

    python -m ltpipe.bench.main_job --baseline 40ba150   # writes bench/results/main-job-cpu.json

Baselines need a source checkout (a git repository); the shards are written by the measured
checkout, and a baseline reads them as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CURRENT = "current"


def fail(message: str) -> None:
    print(f"ltpipe.bench.main_job: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def train_command(python: str, shards: Path, run: Path, epochs: int) -> list[str]:
    return [python, "-m", "ltpipe.train", str(shards), "--out", str(run), "--recipe", "synthetic",
            "--mixer", "cmo", "--epochs", str(epochs), "--device", "cpu", "--no-progress"]


def baseline_python(ref: str, work: Path) -> tuple[str, str]:
    """(short commit, python of a venv with that commit installed) for ``ref`` of this
    repository."""
    def git(*args, **kw):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False, **kw)

    rev = git("rev-parse", "--short", f"{ref}^{{commit}}", text=True)
    if rev.returncode:
        fail(f"--baseline {ref}: not a commit of a git repository at {ROOT}")
    commit = rev.stdout.strip()
    src, venv = work / f"src-{commit}", work / f"venv-{commit}"
    src.mkdir(parents=True)
    archive = git("archive", "--format=tar", commit)
    if archive.returncode:
        fail(f"--baseline {ref}: git archive failed ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    steps = ([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
              "--no-build-isolation", "-e", str(src)])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            fail(f"--baseline {ref}: {' '.join(step[:3])} ... failed ({last})")
    python = str(venv / "bin" / "python")
    # the venv also sees this interpreter's packages: its ltpipe must be the copy, not another
    where = subprocess.run([python, "-c", "import ltpipe.train; print(ltpipe.train.__file__)"],
                           capture_output=True, text=True, check=False).stdout.strip()
    if not where or not Path(where).resolve().is_relative_to(src.resolve()):
        fail(f"--baseline {ref}: its venv imports ltpipe from {where or 'nowhere'}, not {src}")
    return commit, python


def run_once(python: str, shards: Path, work: Path, epochs: int) -> dict:
    """One training run; its per-epoch figures and the load average around it."""
    run = Path(tempfile.mkdtemp(dir=work, prefix="run-")) / "run"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(train_command(python, shards, run, epochs), capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"{python} -m ltpipe.train exited {done.returncode}: {last}")
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
    shutil.rmtree(run.parent, ignore_errors=True)
    return {"epoch_s": [ln["seconds"] for ln in lines],
            "data_wait_ms": [ln["data_wait_ms_per_step"] for ln in lines],
            "wall_s": wall, "load_before": load_before, "load_after": os.getloadavg()[0]}


def steady(values: list[float]) -> float:
    """Median over the epochs after the first (the first alone when there is one)."""
    return statistics.median(values[1:] or values)


def summarize(runs: list[dict]) -> dict:
    """Median over runs of each run's steady figures, with the runs' min and max."""
    out = {}
    for key, per_run in (("epoch_s", [steady(r["epoch_s"]) for r in runs]),
                         ("data_wait_ms", [steady(r["data_wait_ms"]) for r in runs]),
                         ("first_epoch_s", [r["epoch_s"][0] for r in runs])):
        out[f"{key}_median"] = statistics.median(per_run)
        out[f"{key}_min"], out[f"{key}_max"] = min(per_run), max(per_run)
    out["runs"] = runs
    return out


def compare(current: list[dict], baseline: list[dict]) -> dict:
    """Current over baseline: the ratio of the medians, and the ratio within each round (two
    runs back to back, so a load that changes over minutes cancels): its median, min and max."""
    out = {}
    for key in ("epoch_s", "data_wait_ms"):
        mine = [steady(r[key]) for r in current]
        theirs = [steady(r[key]) for r in baseline]
        paired = [a / b for a, b in zip(mine, theirs)]
        out[f"{key}_ratio"] = statistics.median(mine) / statistics.median(theirs)
        out[f"{key}_paired_ratio_median"] = statistics.median(paired)
        out[f"{key}_paired_ratio_min"], out[f"{key}_paired_ratio_max"] = min(paired), max(paired)
    return out


def write_shards_once(shards: Path | None, work: Path) -> Path:
    if shards is not None:
        return shards
    from ltpipe.shards.write import write_shards

    out = work / "synthetic"
    write_shards("synthetic", out, progress=False)  # the embedded default, as `ltpipe shard`
    return out


def main(argv=None) -> int:
    from ltpipe.bench.harness import ScriptParser, positive_int, write_result

    p = ScriptParser(__file__, __doc__)
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs per run (5)")
    p.add_argument("--reps", type=positive_int, default=3, help="runs per tree (3)")
    p.add_argument("--baseline", action="append", default=[], metavar="REF",
                   help="a commit of this repository, measured in alternation with this checkout")
    p.add_argument("--shards", type=Path, default=None,
                   help="an existing shard directory (default: the synthetic default, sharded "
                        "into a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="results folder (bench/results)")
    args = p.parse_args(argv)
    if args.shards is not None and not (args.shards / "manifest.json").is_file():
        fail(f"--shards {args.shards}: no manifest.json (not an `ltpipe shard` output)")
    with tempfile.TemporaryDirectory(prefix="ltpipe-main-job-") as tmp:
        work = Path(tmp)
        shards = write_shards_once(args.shards, work)
        trees = {CURRENT: sys.executable}
        for ref in args.baseline:
            commit, python = baseline_python(ref, work)
            trees[commit] = python
        runs = {name: [] for name in trees}
        order = list(trees)
        t0 = time.perf_counter()
        for rep in range(args.reps):
            for name in (order if rep % 2 == 0 else order[::-1]):
                runs[name].append(run_once(trees[name], shards, work, args.epochs))
                r = runs[name][-1]
                print(f"round {rep + 1}/{args.reps} {name:>8s}: "
                      f"epoch {steady(r['epoch_s']):.2f} s, "
                      f"data wait {steady(r['data_wait_ms']):.1f} ms/step "
                      f"(load {r['load_before']:.1f})", flush=True)
        elapsed = time.perf_counter() - t0
    summaries = {name: summarize(rs) for name, rs in runs.items()}
    results = summaries.pop(CURRENT)
    for name in summaries:
        results.setdefault("vs_baseline", {})[name] = compare(runs[CURRENT], runs[name])
    print(f"{'tree':>8s}  {'epoch s (min-max)':>20s}  {'data wait ms/step (min-max)':>28s}")
    for name, s in ((CURRENT, results), *summaries.items()):
        print(f"{name:>8s}  {s['epoch_s_median']:7.2f} ({s['epoch_s_min']:.2f}-"
              f"{s['epoch_s_max']:.2f})  {s['data_wait_ms_median']:15.1f} "
              f"({s['data_wait_ms_min']:.1f}-{s['data_wait_ms_max']:.1f})")
    for name, v in results.get("vs_baseline", {}).items():
        print(f"current / {name}: epoch x{v['epoch_s_ratio']:.3f} (within rounds: median "
              f"x{v['epoch_s_paired_ratio_median']:.3f}, {v['epoch_s_paired_ratio_min']:.3f}-"
              f"{v['epoch_s_paired_ratio_max']:.3f}), data wait x{v['data_wait_ms_ratio']:.3f}")
    params = {"job": "ltpipe train SHARDS --recipe synthetic --mixer cmo --device cpu",
              "shards": "given" if args.shards else "ltpipe shard synthetic (embedded default)",
              "epochs": args.epochs, "reps": args.reps, "order": "alternating",
              "baselines": args.baseline, "seconds": round(elapsed, 1),
              "command": " ".join(["python", "-m", "ltpipe.bench.main_job",
                                   *(sys.argv[1:] if argv is None else argv)])}
    path = write_result("main-job", params, results, baselines=summaries, out_dir=args.out,
                        device="cpu")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
