"""``ltpipe train SHARDS --out RUN``: resolve recipe + options, then run the Trainer.

Bad input (unknown mixer/loss/model, a value out of range, missing shards or a missing val
split, a corrupt, crafted or mismatched checkpoint, a damaged or foreign config.toml, other
shards on --resume, an output directory another run holds, a non-empty RUN that is no run, RUN
inside the shards or around them, an argument that is not UTF-8, a full disk) ends with one
line on stderr and exit status 2, never a traceback. A run whose loss becomes nan or inf stops
with one line and exit status 3 (train/divergence.py). A run that stopped before its first
checkpoint is started over by the same command or by --resume.
Ctrl-C (SIGINT) and SIGTERM end with what RUN/ckpt/last.pt holds and the command that continues
the run, the lock released, and exit status 130 or 143 (rank 0 prints).
DDP: launch with ``torchrun --nproc_per_node=N -m ltpipe.train SHARDS --out RUN ...``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import click

from ltpipe.shards.outputs import check_apart

# CLI option -> [train] key (None = not given, so the recipe's value stays)
TRAIN_OPTIONS = ("mixer", "loss", "reweight", "model", "epochs", "batch_size", "lr", "wd",
                 "momentum", "warmup", "schedule", "milestones", "gamma", "drw_epoch", "device",
                 "seed", "precision", "channels_last", "compile", "eval_every", "ckpt_every",
                 "preset", "image_size", "compute_stream", "skip_corrupt")
# named shortcuts for mixer params (METHODS.md: Deviations)
log = logging.getLogger(__name__)
NAMED_MIXER_OPTIONS = {"fg_r": "fg_r", "otmix_mode": "mode",
                       "otmix_confusion_split": "confusion_split", "m2m_classifier": "classifier"}
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C
DIVERGED = 3  # the loss became nan or inf: the run stopped (train/divergence.py)
TERMINATED = 143  # 128 + SIGTERM: a scheduler's or `kill`'s request to stop


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: handled as Ctrl-C is (the lock released, what
    was saved and how to go on), but for the exit status."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises Terminated in the main thread while the block runs (off the main
    thread, where no handler can be set, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def fail(message: str, every_rank: bool = True, status: int = 2) -> None:
    """One line on stderr, exit status 2 (bad input) or ``status``. ``every_rank=False``:
    under torchrun, only rank 0 prints (an error every rank finds alike)."""
    if every_rank or os.environ.get("RANK", "0") == "0":
        click.echo(f"ltpipe train: error: {message}", err=True)
    sys.exit(status)


class OneLineError(click.ClickException):
    """A usage error printed as one line (no usage block), exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds it alike
            click.echo(f"ltpipe train: error: {self.format_message()}", err=True)


def not_utf8(args: list[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps such bytes as surrogates), as
    printable text (``out/x\\xff``); None when all are."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(arg).decode("utf-8", "backslashreplace")
    return None


class TrainCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        bad = not_utf8(args)
        if bad is not None:  # config.toml records paths and the command in UTF-8
            raise OneLineError(f"{bad}: not valid UTF-8; ltpipe train records its paths and "
                               "command in RUN/config.toml, which is UTF-8: rename it")
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # bad type, unknown option, missing value
            raise OneLineError(exc.format_message()) from None


def _milestones(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs, got {value!r}") from None


def defaults_epilog() -> str:
    from ltpipe.train.config import DEFAULTS

    listed = ", ".join(f"{k} {v}" for k, v in DEFAULTS["train"].items())
    return ("An option left out takes the recipe's value, else the default. Defaults: "
            f"{listed}.")


@click.command(cls=TrainCommand, context_settings={"help_option_names": ["-h", "--help"]},
               epilog=defaults_epilog())
@click.argument("shards", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Run directory RUN.")
@click.option("--recipe", help="Shipped recipe name (cifar100-lt, synthetic, ...) or FILE.toml.")
@click.option("--mixer", help="none, ros, cutmix, mixup, cmo, smc, otmix, m2m, ...")
@click.option("--loss", help="ce, ldam, bs, la, focal.")
@click.option("--reweight", help="none | inverse | drw.")
@click.option("--model", help="resnet32, resnet8/10/18/20, resnet50, resnext50_32x4d, timm:NAME.")
@click.option("--epochs", type=int, help="Epochs E.")
@click.option("--batch-size", type=int, help="Per-rank batch size.")
@click.option("--lr", type=float, help="Peak learning rate (after warm-up).")
@click.option("--wd", type=float, help="Weight decay.")
@click.option("--momentum", type=float)
@click.option("--warmup", type=int, help="Linear warm-up epochs.")
@click.option("--schedule", help="step | cosine | constant.")
@click.option("--milestones", callback=_milestones, help="Step-decay epochs, e.g. 160,180.")
@click.option("--gamma", type=float, help="Step-decay factor.")
@click.option("--drw-epoch", type=int, help="DRW deferral epoch (default 4/5 of the run).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]))
@click.option("--seed", type=int, help="Seed of model init, loaders and mixers.")
@click.option("--precision", help="bf16 | fp16 | fp32 (CUDA; the CPU trains in fp32).")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC memory format.")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the model.")
@click.option("--eval-every", type=int, help="Evaluate every N epochs (and at the end).")
@click.option("--ckpt-every", type=int, help="Checkpoint every N steps (and at each epoch end).")
@click.option("--preset", help="Augmentation preset: cifar | imagenet.")
@click.option("--image-size", type=int, help="Training image side in px (cifar 32, imagenet 224).")
@click.option("--mixer-opt", multiple=True, metavar="KEY=VALUE", help="Mixer param (TOML value).")
@click.option("--loss-opt", multiple=True, metavar="KEY=VALUE", help="Base-loss param, e.g. tau=1.")
@click.option("--loader-opt", multiple=True, metavar="KEY=VALUE",
              help="DALI resources: threads, py_workers, prefetch, hw_decoder_load, cpu_decode, "
                   "q_decode, images, q_cache_gb, q_cache_side.")
@click.option("--compute-stream", help="CUDA stream priority of the step: high | default.")
@click.option("--fg-r", type=float, help="Foreground (minority stream) r.")
@click.option("--otmix-mode", help="OTmix features: exact (two extra forwards) | bank (stored).")
@click.option("--otmix-confusion-split",
              help="Split OTmix's confusion matrix is measured on (val).")
@click.option("--m2m-classifier", type=click.Path(path_type=Path),
              help="M2m's g: an earlier RUN (its final.pt; an unfinished run's last checkpoint, "
              "with a warning).")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue RUN from its checkpoint.")
@click.option("--skip-corrupt/--no-skip-corrupt", "skip_corrupt", default=None,
              help="Train and evaluate without corrupt samples (counted in metrics.jsonl and "
              "final.json) instead of refusing the shards.")
@click.option("--progress/--no-progress", default=True,
              help="Progress bars on a terminal (epoch lines are printed either way).")
@click.option("--dump-ranks", is_flag=True, hidden=True,
              help="Save each rank's sample ids per epoch and final weights (tests).")
def train(shards, out, recipe, resume, progress, dump_ranks, mixer_opt, loss_opt, loader_opt,
          **options):
    """Train a classifier on SHARDS (an `ltpipe shard` directory) into RUN."""
    with sigterm_as_interrupt():
        return train_command(shards, out, recipe, resume, progress, dump_ranks, mixer_opt,
                             loss_opt, loader_opt, options)


def train_command(shards, out, recipe, resume, progress, dump_ranks, mixer_opt, loss_opt,
                  loader_opt, options):
    from ltpipe.train.checkpoint import CheckpointError
    from ltpipe.train.divergence import Diverged

    try:
        cfg, shards, run_dir = resolve_run(shards, out, recipe, resume, mixer_opt, loss_opt,
                                           options, loader_opt)
    except ValueError as exc:  # ConfigError, CheckpointError, ShardFormatError
        fail(str(exc), every_rank=False)
    except OSError as exc:  # e.g. a name too long for the file system
        fail(os_error_line(exc), every_rank=False)
    except KeyboardInterrupt as exc:  # e.g. while torch is imported: nothing written yet
        interrupted(resume or out, None, 0, resumable=resume is not None, signal_exc=exc)
    try:
        result = run(cfg, shards, run_dir, resume=resume is not None, progress=progress,
                     dump_ranks=dump_ranks)
    except CheckpointError as exc:
        fail(str(exc))
    except Diverged as exc:  # every rank finds it at the same step
        fail(str(exc), every_rank=False, status=DIVERGED)
    except OSError as exc:  # e.g. a full disk while writing metrics or final.json
        fail(os_error_line(exc))
    return result


def os_error_line(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


def resolve_run(shards, out, recipe, resume, mixer_opt, loss_opt, options, loader_opt=()):
    """(resolved config, shard dir, run dir); raises ValueError with a one-line message."""
    from ltpipe.shards.format import load_manifest
    from ltpipe.train.checkpoint import CONFIG, read_config
    from ltpipe.train.config import (ConfigError, as_used, changes, check_chosen_params,
                                     load_recipe, parse_assignments, resolve)
    from ltpipe.train.shard_identity import check_identity

    mixer_params = parse_assignments(mixer_opt, "--mixer-opt")
    named = {}  # mixer param -> the option that set it
    for opt, key in NAMED_MIXER_OPTIONS.items():
        value = options.pop(opt, None)
        if value is not None:  # a path is stored absolute: a resume may start elsewhere
            mixer_params[key] = str(value.resolve()) if isinstance(value, Path) else value
            named[key] = "--" + opt.replace("_", "-")
    train = {k: options.get(k) for k in TRAIN_OPTIONS}
    loss_params = parse_assignments(loss_opt, "--loss-opt")
    loader = parse_assignments(loader_opt, "--loader-opt")
    if resume is not None:
        saved = read_config(resume)
        shards = shards or Path(saved["run"]["shards"])
        out = out or resume
        if Path(out).resolve() != Path(resume).resolve():
            raise ConfigError(f"--out {out} differs from --resume {resume}")
        cfg = as_used(resolve({k: v for k, v in saved.items() if k != "run"}, train,
                              mixer_params, loss_params, loader))
        diff = changes(saved, cfg)
        if diff:
            raise ConfigError(f"{Path(resume) / CONFIG}: options change the run: {', '.join(diff)}")
        cfg["run"] = saved["run"]
        check_apart(Path(out), Path(shards))
        check_identity(resume, shards)
    else:
        if shards is None or out is None:
            raise ConfigError("need SHARDS and --out RUN (or --resume RUN)")
        if Path(out).exists() and not Path(out).is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        check_apart(Path(out), Path(shards))
        if os.environ.get("RANK", "0") == "0":
            check_fresh_out(Path(out))
        base = load_recipe(recipe) if recipe else {}
        cfg = as_used(resolve(base, train, mixer_params, loss_params, loader))
        cfg["run"] = run_table(shards, recipe)
    from ltpipe.train.mixers.registry import mixer_class

    name = cfg["train"]["mixer"]
    try:
        cls = mixer_class(name)  # unknown mixer -> one-line error before any work
    except ImportError as exc:
        raise ConfigError(f"mixer {name!r}: unavailable ({exc})") from None
    check_named_mixer_options(name, cls, cfg["mixer"].get(name, {}), named, resume)
    check_chosen_params(cfg)  # the constructors' own rules, before anything is written
    manifest = load_manifest(shards)
    manifest.split("train")
    if "val" not in manifest.splits:  # checked now, not after training every epoch
        raise ConfigError(f"{manifest.root / 'manifest.json'}: no val split (a run is evaluated "
                          "on it); shard the data with one")
    return cfg, Path(shards), Path(out)


def check_fresh_out(out: Path) -> None:
    """A new run writes into an empty directory, or a run's: not into one that holds a
    checkpoint or results; one that stopped before its first checkpoint (config.toml only) is
    started over. Any other non-empty directory is not a run: the run would overwrite its files
    (metrics.jsonl, final.json, ...) or mix into them (another shard directory)."""
    from ltpipe.shards.outlock import LOCK_NAME
    from ltpipe.train.checkpoint import CONFIG, LAST, read_config
    from ltpipe.train.config import ConfigError
    from ltpipe.train.report import FINAL as FINAL_JSON
    from ltpipe.train.shard_identity import IDENTITY

    if not (out / CONFIG).is_file():
        # what a run writes before config.toml: this run's lock, a failed run's shards.json
        theirs = sorted(p.name for p in out.iterdir() if p.name not in (LOCK_NAME, IDENTITY)) \
            if out.is_dir() else []
        if theirs:
            raise ConfigError(f"--out {out}: not empty and not a run (no {CONFIG}; it holds "
                              f"{_short_list(theirs)}); choose an empty or new directory")
        return
    if (out / LAST).exists() or (out / FINAL_JSON).exists():
        raise ConfigError(f"{out}: already holds a run (use --resume {out} or another --out)")
    read_config(out)  # a config.toml of one's own is no run to start over: one line naming it
    log.warning("warning: %s: a run that stopped before its first checkpoint: starting over", out)


def _short_list(names: list[str], shown: int = 3) -> str:
    from ltpipe.shards.text import printable  # names from the disk: no terminal control

    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(printable(n) for n in names[:shown]) + more


def check_named_mixer_options(name: str, cls, params: dict, named: dict, resume) -> None:
    """Errors that name the option the user typed (--m2m-classifier), not the mixer's param."""
    from ltpipe.train.checkpoint import CONFIG
    from ltpipe.train.config import ConfigError
    from ltpipe.train.params import accepted

    takes = accepted(cls, skip=("env",))
    for key, option in named.items():
        if key not in takes:
            raise ConfigError(f"{option}: mixer {name!r} does not use it")
    run = params.get("classifier")
    if isinstance(run, str) and not (Path(run) / CONFIG).is_file():
        source = named.get("classifier") or (
            "--mixer-opt classifier" if resume is None else f"{Path(resume) / CONFIG}: classifier")
        raise ConfigError(f"{source} {run}: not an ltpipe run directory (no {CONFIG})")


def run_table(shards: Path, recipe: str | None) -> dict:
    from ltpipe.train.provenance import git_hash

    return {"git": git_hash(), "shards": str(Path(shards).resolve()), "recipe": recipe or "",
            "command": typed_command(sys.argv, os.environ)}


def launcher(argv: list[str], env) -> tuple[list[str], list[str]]:
    """(the program as typed, its arguments): ``ltpipe train``, ``python -m ltpipe.train`` or
    torchrun, whose worker's argv is the module's file."""
    if argv[0].endswith("__main__.py"):
        prog = ["python", "-m", "ltpipe.train"]
        if "LOCAL_WORLD_SIZE" in env:  # started by torchrun
            prog = ["torchrun", f"--nproc_per_node={env['LOCAL_WORLD_SIZE']}", "-m",
                    "ltpipe.train"]
        return prog, argv[1:]
    if argv[1:2] == ["train"]:
        return [Path(argv[0]).name, "train"], argv[2:]
    return [Path(argv[0]).name], argv[1:]


def typed_command(argv: list[str], env) -> str:
    """The command as typed (recorded in config.toml)."""
    prog, args = launcher(argv, env)
    return shlex.join(prog + args)


def resume_command(run_dir: Path, argv: list[str], env) -> str:
    """The command that continues RUN, started the way this run was."""
    return shlex.join(launcher(argv, env)[0] + ["--resume", str(run_dir)])


def interrupted(run_dir, saved, epochs: int, resumable: bool, signal_exc=None) -> None:
    """Ctrl-C or SIGTERM (``signal_exc``: the KeyboardInterrupt or Terminated raised): what
    RUN/ckpt/last.pt holds (``saved``: its (epoch, step, step_in_epoch), None when this run saved
    none) and the command that goes on; rank 0 prints; exit status 130, or 143 for SIGTERM.
    ``resumable``: RUN/config.toml is this run's, so --resume continues (or starts) it."""
    from ltpipe.train.checkpoint import LAST
    from ltpipe.train.report import position

    if os.environ.get("RANK", "0") == "0":
        run_dir = Path(run_dir) if run_dir is not None else None
        if saved is not None:
            what = f"saved {run_dir / LAST} at {position(*saved, epochs)}"
        elif run_dir is not None and resumable and (run_dir / LAST).is_file():
            what = f"{run_dir / LAST} is unchanged"  # stopped while a resume set up
        else:
            what = "nothing saved yet"
        if run_dir is not None and resumable:
            verb = "start again" if what == "nothing saved yet" else "continue"
            again = resume_command(run_dir, sys.argv, os.environ)
        else:
            verb, again = "start again", typed_command(sys.argv, os.environ)
        how = "terminated (SIGTERM)" if isinstance(signal_exc, Terminated) else "interrupted"
        click.echo(f"ltpipe train: {how}; {what}", err=True)
        click.echo(f"{verb} with: {again}", err=True)
    sys.exit(TERMINATED if isinstance(signal_exc, Terminated) else INTERRUPTED)


def run(cfg: dict, shards: Path, run_dir: Path, *, resume: bool, progress: bool,
        dump_ranks: bool = False) -> dict:
    """Start the process group, lock RUN (rank 0), write config.toml (rank 0), train, tear
    down."""
    import torch.distributed as dist

    from ltpipe.shards.bounded import ParseError, read_json
    from ltpipe.train.checkpoint import CONFIG
    from ltpipe.train.config import to_toml
    from ltpipe.train.dist import init_distributed, shutdown
    from ltpipe.train.outputs import write_text_atomic
    from ltpipe.train.report import FINAL as FINAL_JSON
    from ltpipe.train.shard_identity import write_identity
    from ltpipe.train.trainer import Trainer

    trainer, resumable, info = None, resume, None
    try:
        info = init_distributed(cfg["train"]["device"])
    except ValueError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:
        interrupted(run_dir, None, 0, resumable, signal_exc=exc)
    try:
        cfg["run"]["world"] = info.world
        # the collective backend the ranks talk over ("none": one process, no process group)
        cfg["run"]["backend"] = dist.get_backend() if info.distributed else "none"
        with locked_run_dir(run_dir, info, fresh=not resume):
            try:
                trainer = Trainer(cfg, shards, run_dir, info, resume=resume, progress=progress,
                                  dump_ranks=dump_ranks)
            except ValueError as exc:  # bad parameters: nothing written yet, the same --out reruns
                fail(str(exc))
            if trainer.finished:  # a resumed run with nothing left to train: change nothing
                results = run_dir / FINAL_JSON
                if info.is_main:
                    click.echo(f"{run_dir}: already finished ({results})")
                try:
                    return read_json(results, 64 << 20, "final.json")
                except ParseError as exc:
                    fail(str(exc))
                except OSError as exc:
                    fail(f"{results}: {exc.strerror or exc}")
            if info.is_main and not resume:  # before any step, so that --resume finds it
                write_identity(run_dir, shards)
                write_text_atomic(run_dir / CONFIG, to_toml(cfg))
            resumable = True
            return trainer.fit()
    except KeyboardInterrupt as exc:  # after the lock is released (RUN may be removed if empty)
        interrupted(run_dir, trainer.saved if trainer is not None else None,
                    cfg["train"]["epochs"], resumable, signal_exc=exc)
    finally:
        shutdown(info)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path, info, fresh: bool):
    """Rank 0, the only rank that writes RUN, holds RUN/.ltpipe.lock for the run's lifetime, so
    two runs never write into one RUN. Every rank learns of a refusal (one collective) and exits
    2 with it. A RUN this made and left empty (an error before config.toml) is removed again."""
    from ltpipe.shards.outlock import output_lock
    from ltpipe.train.dist import gather_objects

    created, error = False, None
    with contextlib.ExitStack() as stack:
        if info.is_main:
            try:
                created = not run_dir.exists()
                run_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(output_lock(run_dir, typed_command(sys.argv, os.environ)))
                if fresh:  # again under the lock: another run may have started it meanwhile
                    check_fresh_out(run_dir)
            except (ValueError, OSError) as exc:  # OutputLockedError, ConfigError
                error = str(exc)
        refusal = next((e for e in gather_objects(error, info) if e is not None), None)
        try:
            if refusal is not None:
                fail(refusal, every_rank=False)
            yield
        finally:
            stack.close()  # the lock goes first: then RUN may be empty
            if created:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only when empty
