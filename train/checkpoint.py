"""Atomic checkpoints, RNG capture for exact resume, and loading a finished run's model.

``RUN/ckpt/last.pt`` holds everything a bit-identical resume needs: model, optimizer, scheduler,
scaler, mixer and criterion state, loader state, all RNG states, the step counters and the
running epoch sums. It is written to a temporary name and renamed, so a kill leaves either the
old or the new file, never half of one; Ctrl-C or SIGTERM during the write take effect once it
is done. ``RUN/final.pt`` holds the final model only.

Loading never unpickles code: ``torch.load(weights_only=True)`` accepts tensors and plain values
(dicts, lists, tuples, numbers, strings, bytes) only, which is all ltpipe saves. The RNG states are
kept in that form (numpy's as a tensor and plain values), and a DALI pipeline's checkpoint is bytes.
A file holding anything else, e.g. a crafted ``last.pt`` or one of format 1 (numpy arrays), is
refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from ltpipe.shards.bounded import ParseError, read_toml

LAST = Path("ckpt") / "last.pt"
FINAL = "final.pt"
CONFIG = "config.toml"
FORMAT = 2  # 2: RNG states as tensors and plain values (format 1 pickled numpy arrays)
# what a checkpoint must hold to be used (an incomplete one is an error naming the keys)
FINAL_KEYS = ("format", "num_classes", "model")
LAST_KEYS = FINAL_KEYS + ("config", "world", "epoch", "step", "step_in_epoch", "optimizer",
                          "scheduler", "scaler", "mixer", "criterion", "loader", "sums", "rng")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or belongs to another configuration (names the file)."""


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM that come during the block take effect when it ends (main thread;
    elsewhere no handler can be set, and nothing changes). torch.save stopped midway by the
    trainer's KeyboardInterrupt reports an unrelated RuntimeError from its zip writer instead,
    and leaves the temporary file behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    before = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
              for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):  # once each, to the handlers of before the block
            signal.raise_signal(signum)


def save_atomic(obj: dict, path: Path) -> None:
    """Write ``obj`` to a temporary name, then rename: a kill or a full disk leaves the previous
    file in place (an OSError becomes a one-line CheckpointError); a Ctrl-C or SIGTERM meanwhile
    waits until the file is in place."""
    with signals_held():
        _save_atomic(obj, path)


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        kept = "; the previous checkpoint is kept" if path.is_file() else ""
        raise CheckpointError(f"{path}: cannot write ({exc.strerror or exc}){kept}") from None


def check_ckpt_dir(run_dir: Path) -> None:
    """RUN/ckpt must be a folder and RUN/ckpt/last.pt a file, where they exist."""
    folder, last = Path(run_dir) / LAST.parent, Path(run_dir) / LAST
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory (ltpipe keeps checkpoints there); "
                              "move it away")
    if last.exists() and not last.is_file():
        raise CheckpointError(f"{last}: not a file; move it away")


def load_file(path: Path, device: torch.device | str = "cpu", required=LAST_KEYS,
              formats: tuple[int, ...] = (FORMAT,)) -> dict:
    """A checkpoint with the keys ``required``, loaded without unpickling code."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (was the run started with this --out?)")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not an object load refused: a damaged file
            raise CheckpointError(f"{path}: corrupt checkpoint (UnpicklingError)") from None
        raise CheckpointError(
            f"{path}: refused: it holds Python objects, not only tensors and plain values "
            f"(ltpipe never unpickles them; a checkpoint of format 1, from an older ltpipe, "
            f"cannot be used)") from None
    except Exception as exc:  # noqa: BLE001 - any other load failure means a corrupt file
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise CheckpointError(f"{path}: not an ltpipe checkpoint of format "
                              f"{' or '.join(map(str, formats))} (format {found!r})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    return obj


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 state as a tensor and plain values: loadable with weights_only
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's device only (each DDP rank saves its own): restoring every visible
        # GPU's state would open a CUDA context on each of them
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"].cpu())


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not an ltpipe run directory)")
    from ltpipe.train.config import TOML_MAX_BYTES, check_run_config

    try:
        doc = read_toml(path, TOML_MAX_BYTES, "config.toml")
    except ParseError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror or exc})") from None
    check_run_config(doc, path)  # damaged or foreign: one line naming the field
    return doc


def load_model(run_dir: str | Path, device: torch.device | str = "cpu",
               num_classes: int | None = None, image_size: int | None = None,
               shards: str | Path | None = None):
    """The final (else last) model of an earlier run, frozen and in eval mode (M2m's g);
    ``num_classes``: the classes it must have been trained on (else an error); ``image_size``,
    ``shards``: what this run trains on (a classifier trained otherwise is warned about)."""
    from ltpipe.train.losses.per_sample import NEEDS_COSINE
    from ltpipe.train.models import build_model

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    path = run_dir / FINAL if (run_dir / FINAL).is_file() else run_dir / LAST
    # a final.pt of format 1 holds tensors and plain values only: still usable
    ckpt = load_file(path, "cpu", required=FINAL_KEYS, formats=(1, FORMAT))
    if path.name != FINAL:  # usable (e.g. to try M2m early), but rarely what was meant
        epochs = cfg.get("train", {}).get("epochs", "?")
        log.warning("warning: %s has no %s (an unfinished run): using its last checkpoint, "
                    "epoch %s of %s", run_dir, FINAL, ckpt.get("epoch", "?"), epochs)
    if num_classes is not None and int(ckpt["num_classes"]) != num_classes:
        raise CheckpointError(f"{path}: trained on {ckpt['num_classes']} classes, this run has "
                              f"{num_classes}")
    train = cfg["train"]
    _warn_if_trained_otherwise(run_dir, cfg, image_size, shards)
    model = build_model(train["model"], int(ckpt["num_classes"]),
                        cosine_classifier=train["loss"] in NEEDS_COSINE)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("heads.")}
    try:
        model.load_state_dict(state, strict=False)
        missing = [k for k in model.state_dict() if k not in state and not k.startswith("heads.")]
        if missing:
            raise RuntimeError(f"missing {missing[:3]}")
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not match model {train['model']!r} ({exc})") from None
    model.to(device).eval().requires_grad_(False)
    return model


def _warn_if_trained_otherwise(run_dir: Path, cfg: dict, image_size, shards) -> None:
    """Same class count, other data or resolution: usable, but rarely what was meant."""
    theirs = cfg.get("train", {}).get("image_size")
    if image_size is not None and theirs is not None and int(theirs) != int(image_size):
        log.warning("warning: %s was trained at %s px, this run trains at %s px", run_dir, theirs,
                    image_size)
    their_shards = cfg.get("run", {}).get("shards")
    if shards is not None and their_shards and \
            Path(their_shards).resolve() != Path(shards).resolve():
        log.warning("warning: %s was trained on %s, this run reads %s", run_dir, their_shards,
                    Path(shards).resolve())
