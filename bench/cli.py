"""``ltpipe bench loader|e2e|kernels``: a thin CLI over the benchmark modules of ``ltpipe.bench``.

Each subcommand runs ``ltpipe.bench.<name>``'s ``main(argv)`` in this process, then reads the
result JSON it wrote (schema: ``ltpipe.bench.harness.write_result``), prints a table and writes a
PNG bar chart beside it (``<name>-<device>.png``). Options the CLI does not know go to the module
unchanged, so ``ltpipe bench e2e SHARDS --device cpu --tiny --steps 4`` runs
``python -m ltpipe.bench.e2e --shards SHARDS --device cpu --out ltpipe-bench --tiny --steps 4``
(SHARDS first: the module's options may take values, so no later word can be told from it).
Results go to ``./ltpipe-bench/`` unless ``--out`` says otherwise: a checkout's committed
``bench/results/`` is written only when asked for (``--out bench/results``). The module's own
stdout table is not echoed (the CLI prints one table); its progress on stderr is.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import sys
import time
from pathlib import Path

import click

BENCHMARKS = ("loader", "e2e", "kernels")
# keys that describe a measurement rather than being one (left out of tables and charts)
SKIP_KEYS = frozenset({"std", "runs", "p10_ms", "p90_ms", "iterations", "meets_targets", "profile"})
MAX_PANELS = 6
DEFAULT_OUT = Path("ltpipe-bench")  # not bench/results: committed files change only on request
PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


class BenchError(click.ClickException):
    """A one-line error; exit status 2 like every other bad input of the CLI."""

    exit_code = 2


def load_script(name: str):
    """The benchmark module ``ltpipe.bench.<name>`` (imported on first use: it imports torch)."""
    return importlib.import_module(f"ltpipe.bench.{name}")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def split_shards(script_args: tuple[str, ...], generate: Path | None) -> tuple[list, list]:
    """(["--shards", SHARDS] or ["--generate", DIR], the remaining script options).

    SHARDS is the first argument when it is not an option (the script's own options may take
    values, so a later bare word cannot be told apart from SHARDS)."""
    args = list(script_args)
    shards = Path(args.pop(0)) if args and not args[0].startswith("-") else None
    if shards is not None and generate is not None:
        raise click.UsageError("give either SHARDS or --generate DIR, not both")
    if generate is not None:
        return ["--generate", str(generate)], args
    if shards is None and any(a == "--shards" or a.startswith("--shards=") for a in args):
        return [], args  # the script's own --shards DIR
    if shards is None:
        raise click.UsageError("SHARDS: give a shard directory first (or --generate DIR)")
    if not (shards / "manifest.json").is_file():
        raise click.UsageError(f"{shards}: not a shard directory (no manifest.json)")
    return ["--shards", str(shards)], args


def run_benchmark(name: str, argv: list[str], out: Path) -> tuple[Path | None, int]:
    """Run ltpipe.bench.<name>'s main(argv): (the result JSON it wrote into ``out`` or None,
    status)."""
    module = load_script(name)
    started = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the table printed below replaces it
            code = module.main(argv)
    except SystemExit as exc:  # argparse errors: the script already printed its message
        code = exc.code
        if isinstance(code, str):  # sys.exit("message"): print it, as Python would
            print(code, file=sys.stderr)
    except ValueError as exc:  # the library's one-line input errors (ShardFormatError, ...)
        print(f"ltpipe bench {name}: error: {exc}", file=sys.stderr)
        code = 2
    code = 0 if code is None else (code if isinstance(code, int) else 2)
    written = [p for p in out.glob(f"{name}-*.json") if p.stat().st_mtime >= started - 1]
    return (max(written, key=lambda p: p.stat().st_mtime) if written else None), code


# ---------------------------------------------------------------- table and chart

def result_rows(doc: dict) -> list[dict]:
    """Flatten results/baselines into rows {source, label, metric, value, std, low, high}.

    A dict with "mean" is one measurement (metric = its key, spread its "std"); any other number
    is one too (metric = its key, e.g. "median_ms", "ltpipe_vs_ceiling"), and a "median_ms"
    beside "p10_ms"/"p90_ms" takes them as its spread (low, high); SKIP_KEYS and target_* are
    not rows.
    """
    rows: list[dict] = []

    def walk(node, path: tuple[str, ...], source: str) -> None:
        for key, value in node.items():
            if key in SKIP_KEYS or key.startswith("target_"):
                continue
            label = "/".join(path) or key
            if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
                rows.append(dict(source=source, label=label, metric=key,
                                 value=float(value["mean"]), std=value.get("std"),
                                 low=None, high=None))
            elif isinstance(value, dict):
                walk(value, path + (key,), source)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = (node.get("p10_ms"), node.get("p90_ms")) if key == "median_ms" \
                    else (None, None)
                rows.append(dict(source=source, label=label, metric=key, value=float(value),
                                 std=None, low=low, high=high))

    walk(doc["results"], (), "result")
    walk(doc["baselines"], (), "baseline")
    return paired([r for r in rows if math.isfinite(r["value"])])


def paired(rows: list[dict]) -> list[dict]:
    """Each result followed by its baselines (a baseline of result "paste_nchw" is labelled
    "paste_nchw_<how>"), so table and chart compare neighbours; unmatched baselines last."""
    results = [r for r in rows if r["source"] == "result"]
    left = [r for r in rows if r["source"] != "result"]
    out = []
    for r in results:
        mine = [b for b in left if b["metric"] == r["metric"]
                and b["label"].startswith(r["label"] + "_")]
        out += [r] + mine
        left = [b for b in left if b not in mine]
    return out + left


def spread(r: dict) -> str:
    """"±std" for a mean, "p10–p90" for a median, else empty."""
    if isinstance(r["std"], (int, float)):
        return f"±{r['std']:.4g}"
    if isinstance(r.get("low"), (int, float)) and isinstance(r.get("high"), (int, float)):
        return f"p10–p90 {r['low']:.4g}–{r['high']:.4g}"
    return ""


def format_table(rows: list[dict]) -> str:
    width = max([len(r["label"]) for r in rows] + [5])
    mwidth = max([len(r["metric"]) for r in rows] + [6])
    lines = [f"{'':9}{'label':{width}}  {'metric':{mwidth}}  {'value':>12}  spread"]
    for r in rows:
        lines.append(f"{r['source']:9}{r['label']:{width}}  {r['metric']:{mwidth}}  "
                     f"{r['value']:12.4g}  {spread(r)}")
    return "\n".join(lines)


def error_bars(sel: list[dict]) -> list[list[float]]:
    """[[below], [above]] for barh: ±std, or the p10/p90 percentiles around a median."""
    below, above = [], []
    for r in sel:
        if isinstance(r["std"], (int, float)):
            below.append(r["std"])
            above.append(r["std"])
        elif isinstance(r.get("low"), (int, float)) and isinstance(r.get("high"), (int, float)):
            below.append(max(0.0, r["value"] - r["low"]))
            above.append(max(0.0, r["high"] - r["value"]))
        else:
            below.append(0.0)
            above.append(0.0)
    return [below, above]


def short_label(label: str, width: int = 70) -> str:
    """A bar label that leaves the bars room (e2e variant labels can hold a shard path)."""
    return label if len(label) <= width else "…" + label[-(width - 1):]


def axis_scale(values: list[float]) -> str:
    """"log" when a panel's positive values span more than 30x (paste kernels at 0.02 ms beside
    Sinkhorn at 100 ms would be invisible bars on a linear axis), else "linear"."""
    if not values or min(values) <= 0:
        return "linear"
    return "log" if max(values) / min(values) > 30 else "linear"


def write_chart(rows: list[dict], path: Path, title: str) -> Path:
    """One horizontal bar panel per metric (results blue, baselines grey); atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    metrics = list(dict.fromkeys(r["metric"] for r in rows))[:MAX_PANELS]
    heights = [max(1, sum(r["metric"] == m for r in rows)) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, squeeze=False, constrained_layout=True,
                             figsize=(8, 1.2 + 0.35 * sum(heights) + 0.6 * len(metrics)),
                             gridspec_kw={"height_ratios": heights})
    for ax, metric in zip(axes[:, 0], metrics):
        sel = [r for r in rows if r["metric"] == metric]
        ys = range(len(sel))
        ax.barh(ys, [r["value"] for r in sel], xerr=error_bars(sel),
                color=["tab:blue" if r["source"] == "result" else "tab:gray" for r in sel])
        ax.set_yticks(list(ys), [short_label(r["label"]) for r in sel], fontsize=8)
        ax.invert_yaxis()
        scale = axis_scale([r["value"] for r in sel])
        ax.set_xscale(scale)
        ax.set_title(metric + (" (log scale)" if scale == "log" else ""), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=[Patch(color="tab:blue", label="ltpipe"),
                        Patch(color="tab:gray", label="baseline")],
               loc="upper right", fontsize=8)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def report(path: Path) -> None:
    """Validate the JSON, print its table, write its chart."""
    from ltpipe.bench.harness import validate_result

    try:
        doc = json.loads(path.read_text())
        validate_result(doc)
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable result ({str(exc).splitlines()[0]})")
    rows = result_rows(doc)
    click.echo(f"{doc['name']} on {doc['device']} (git {doc['git']}, {doc['date']})")
    if not rows:
        click.echo("(no numeric results)")
        return
    click.echo(format_table(rows))
    chart = write_chart(rows, path.with_suffix(".png"), f"{doc['name']} on {doc['device']}")
    click.echo(f"wrote {path} and {chart}")


# ---------------------------------------------------------------- commands

def _run(name: str, base: list[str], out: Path | None, device: str, extra: tuple[str, ...]):
    out = Path(out or DEFAULT_OUT)
    argv = base + ["--device", resolve_device(device), "--out", str(out)] + list(extra)
    path, code = run_benchmark(name, argv, out)
    if path is not None:
        report(path)  # also after a partial failure: what was measured is in the JSON
    elif code == 0:
        raise BenchError(f"bench {name}: no {name}-*.json was written into {out}")
    if code:
        sys.exit(code)


def _common(f, metavar: str = "[SCRIPT_OPTIONS]..."):
    f = click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar=metavar)(f)
    f = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                     show_default=True, help="auto: cuda when torch sees a GPU.")(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                     help="Results folder (default: ./ltpipe-bench; `--out bench/results` "
                     "updates the checkout's committed results).")(f)
    return f


def _with_shards(f):
    f = _common(f, "SHARDS [SCRIPT_OPTIONS]...")
    return click.option("--generate", type=click.Path(file_okay=False, path_type=Path),
                        help="Instead of SHARDS: write the synthetic iNat-like set here first "
                        "(reused when complete).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Throughput benchmarks: loader, e2e, kernels.

    SHARDS comes first; options not listed here go to the benchmark unchanged (see
    `python -m ltpipe.bench.<name> --help`), e.g. `ltpipe bench e2e SHARDS --device cpu --tiny`."""


@bench.command(context_settings=PASS_THROUGH)
@_with_shards
def loader(generate, out, device, script_args):
    """DALI P+Q pipeline vs the torchvision reference loader: pairs/s and images/s."""
    base, extra = split_shards(script_args, generate)
    _run("loader", base, out, device, extra)


@bench.command(context_settings=PASS_THROUGH)
@_with_shards
def e2e(generate, out, device, script_args):
    """Training step end to end: ceiling (resident batches) vs ltpipe vs torchvision loaders."""
    base, extra = split_shards(script_args, generate)
    _run("e2e", base, out, device, extra)


@bench.command(context_settings=PASS_THROUGH)
@_common
def kernels(out, device, script_args):
    """paste / resize-paste / Sinkhorn kernels vs torch and POT baselines (no SHARDS)."""
    _run("kernels", [], out, device, script_args)
