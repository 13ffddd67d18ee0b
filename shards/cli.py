"""``ltpipe shard`` and ``ltpipe inspect`` (loaded lazily by ltpipe.train.cli).

Bad input (SOURCE, option values, OUT) is one ``Error: ...`` line on stderr and exit code 2,
including click's own parse errors, never a traceback.
"""

from __future__ import annotations

import errno
import shlex
from pathlib import Path

import click

from ltpipe.shards.synthetic import PROFILES


class InputError(click.ClickException):
    exit_code = 2

    def format_message(self) -> str:  # names from the data: no terminal control, one line
        from ltpipe.shards.text import printable

        return printable(self.message)


class OneLineCommand(click.Command):
    """Click's usage errors print usage + hint + error; ltpipe prints the error line only."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise InputError(exc.format_message()) from None
        ctx.meta["ltpipe.argv"] = argv
        return ctx


def _positive(name: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be > 0, got {value}", param_hint=f"'{name}'")
        return value
    return check


@click.command(cls=OneLineCommand)
@click.argument("source")
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option("--imbalance", type=float, help="Make train long-tailed: n_k = n_max*R^(-k/(C-1)).")
@click.option("--max-size", type=int, callback=_positive("--max-size"),
              help="Resize so the long side is at most PX (aspect kept).")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of re-encoded images.")
@click.option("--shard-size", default="256MB", show_default=True, help="Max bytes per shard.")
@click.option("--samples-per-shard", type=int, callback=_positive("--samples-per-shard"),
              help="Max samples per shard (also honours --shard-size).")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle/synthetic seed.")
@click.option("--workers", type=click.IntRange(1, 512), default=1, show_default=True,
              help="Encoding processes.")
@click.option("--dry-run", is_flag=True, help="Print the plan (classes, counts, shards) only.")
@click.option("--val-list", type=click.Path(exists=True, dir_okay=False),
              help="Eval split list for a list: SOURCE.")
@click.option("--val-json", type=click.Path(exists=True, dir_okay=False),
              help="Eval split json for an inat: SOURCE.")
@click.option("--max-pixels", type=int, default=89_478_485, show_default=True,
              callback=_positive("--max-pixels"),
              help="Reject larger images (width x height, read from the header) to rejected.tsv.")
@click.option("--allow-outside-root", is_flag=True,
              help="list:/inat: paths may leave ROOT ('..', absolute paths); rejected otherwise.")
@click.option("--val-per-class", type=int, callback=_positive("--val-per-class"),
              help="imagefolder: hold out N train images per class as a balanced val split "
                   "(chosen by --seed).")
@click.option("--size", type=click.Choice(list(PROFILES)), default="default", show_default=True,
              help="Synthetic profile.")
@click.option("--classes", type=int, help="Synthetic: number of classes.")
@click.option("--max-per-class", type=int, help="Synthetic: images of the head class.")
@click.option("--image-size", type=int, help="Synthetic: square image side in px.")
@click.pass_context
def shard(ctx, source, out, **options):
    """Write SOURCE as WebDataset shards in OUT (OUT may be left out only with --dry-run).

    SOURCE is synthetic (default data, no files), imagefolder:PATH, list:FILE[:ROOT],
    inat:JSON[:ROOT], cifar10:DIR, cifar100:DIR or shards:DIR (another shard directory, e.g. to
    store it smaller with --max-size).
    """
    from ltpipe.shards.errors import ShardInputError, ShardWorkerError
    from ltpipe.shards.outlock import OutputLockedError
    from ltpipe.shards.text import printable
    from ltpipe.shards.write import write_shards

    if out is None and not options["dry_run"]:
        raise InputError("Missing argument 'OUT' (only --dry-run runs without one).")
    command = " ".join([ctx.command_path, shlex.join(ctx.meta.get("ltpipe.argv", []))])
    before = _manifest_stamp(out)
    try:
        m = write_shards(source, out or Path("."), command=command, **options)
    except (ShardInputError, OutputLockedError) as exc:
        raise InputError(str(exc)) from None
    except ShardWorkerError as exc:
        raise click.ClickException(printable(exc)) from None
    except BrokenPipeError:
        raise  # `| head`: click ends quietly
    except OSError as exc:
        where = printable(f"{exc.filename or out}: {exc.strerror or exc}")
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)) or \
                exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):  # an unusable OUT or SOURCE
            raise InputError(where) from None
        raise click.ClickException(where) from None  # e.g. a full disk: exit status 1
    if m is None:
        return
    parts = [f"{s.num_samples} {name}" for name, s in m.splits.items()]
    shards = sum(len(s.shards) for s in m.splits.values())
    size = sum(sh.bytes for s in m.splits.values() for sh in s.shards)
    rejected = m.rejected if m.rejected is not None else "unknown"
    done = before is not None and before == _manifest_stamp(out)  # a re-run of a finished job
    root = printable(m.root)
    if "val" not in m.splits:  # `ltpipe train` evaluates on val: say so now, not after training
        click.echo(f"warning: {root} has no val split, which `ltpipe train` needs (make one "
                   f"with --val-per-class N, --val-list or --val-json)", err=True)
    click.echo(f"{'already complete:' if done else 'wrote'} {' / '.join(parts)} images in "
               f"{shards} shards ({size / 1e6:.1f} MB) {'in' if done else 'to'} {root}; "
               f"{rejected} rejected"
               + (f" (see {printable(m.root / 'rejected.tsv')})" if rejected else ""))


def _manifest_stamp(out: Path | None) -> int | None:
    """The manifest's modification time (ns), None when there is none yet."""
    from ltpipe.shards.format import MANIFEST

    try:
        return (out / MANIFEST).stat().st_mtime_ns if out is not None else None
    except OSError:
        return None


@click.command(cls=OneLineCommand)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Re-read every shard: checksums, offsets, decoding.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the sorted class-count histogram (log scale) to this PNG.")
def inspect(out, verify, plot):
    """Print classes, counts, Many/Medium/Few groups and shard sizes of OUT."""
    from ltpipe.shards import inspect as insp
    from ltpipe.shards.format import ShardFormatError, load_manifest
    from ltpipe.shards.text import printable

    try:
        m = load_manifest(out)
    except ShardFormatError as exc:
        raise InputError(str(exc)) from None
    for line in insp.summary_lines(m):
        click.echo(line)
    if plot is not None:
        from ltpipe.shards.outputs import check_png_out

        try:  # preview's rules: never over a file that is not a PNG, nor into the shards
            check_png_out(plot, Path(out), "--plot", "ltpipe inspect")
            click.echo(f"plot: {insp.plot_counts(m, plot)}")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        except OSError as exc:
            raise InputError(f"--plot {plot}: {exc.strerror or exc}") from None
    if verify:
        try:
            problems = insp.verify(m)
        except ShardFormatError as exc:
            raise click.ClickException(printable(exc)) from None
        for p in problems[:50]:
            click.echo(f"  {printable(p)}", err=True)
        if problems:
            raise click.ClickException(printable(f"verify: {len(problems)} problem(s) in {out}"))
        n = sum(s.num_samples for s in m.splits.values())
        click.echo(f"verify: OK ({n} samples, checksums, offsets, DALI indexes, decoding)")
