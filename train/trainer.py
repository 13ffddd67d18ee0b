"""The lean trainer: epochs of ``train_step``, evaluation, reports, atomic checkpoints, resume.

Exact resume (CPU): the checkpoint holds model, optimizer, scheduler, scaler, mixer, criterion,
loader position, RNG states and the epoch's running sums; mixer draws are a function of
(seed, epoch, step, rank). A run killed mid-epoch and resumed therefore ends with the same
weights, bit for bit, as an uninterrupted one (tests/test_train_resume.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ltpipe.shards.format import load_manifest
from ltpipe.train import build
from ltpipe.train.checkpoint import (FINAL, FORMAT, LAST, CheckpointError, check_ckpt_dir,
                                     load_file, rng_state, save_atomic, set_rng_state)
from ltpipe.train.config import changes
from ltpipe.train.cuda_stream import compute_stream
from ltpipe.train.divergence import Diverged, DivergenceWatch
from ltpipe.train.dist import (DistInfo, all_reduce_sum, barrier, broadcast_buffers,
                               gather_objects)
from ltpipe.train.evaluate import class_hits, format_table, summarize
from ltpipe.train.loop import EpochSums, make_autocast, train_step
from ltpipe.train.mixers.base import StepContext
from ltpipe.train.report import FINAL as FINAL_JSON
from ltpipe.train.report import RunReport, epoch_label, named_per_class, position
from ltpipe.train.shard_identity import check_contents
from ltpipe.train.step_keys import EPOCH_TAG, step_generator
from ltpipe.train.step_timer import StepTimer, tail


log = logging.getLogger(__name__)
SHOWN = ("train_loss", "mixed_share", "top1", "many", "medium", "few", "images_per_s",
         "data_wait_ms_per_step")


class Trainer:
    def __init__(self, cfg: dict, shards: Path, run_dir: Path, info: DistInfo, *,
                 resume: bool = False, progress: bool = True, dump_ranks: bool = False):
        t = cfg["train"]
        self.cfg, self.t, self.info, self.run_dir = cfg, t, info, Path(run_dir)
        # progress bars on a terminal only (tqdm's None: a redirected log gets no \r fragments);
        # the epoch lines are printed either way
        self.bars = None if progress and info.is_main else True  # tqdm's disable=
        self.dump_ranks = dump_ranks
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.saved = None  # (epoch, step, step_in_epoch) of RUN/ckpt/last.pt, once there is one
        ckpt = None
        check_ckpt_dir(self.run_dir)
        if resume and (self.run_dir / LAST).is_file():
            ckpt = load_file(self.run_dir / LAST, info.device)
        elif resume and info.is_main:  # config.toml only: stopped before its first checkpoint
            log.warning("%s: no checkpoint yet (the run stopped before its first): training from "
                        "the start", self.run_dir)
        if ckpt is not None:
            self._check_matches(ckpt)
            self.epoch, self.step, self.step_in_epoch = self._counters(ckpt)
            self.saved = (self.epoch, self.step, self.step_in_epoch)
        # The mixer decides the streams, the minority r and the mix plan before the loader exists.
        manifest = load_manifest(shards)  # global train counts n_k (METHODS.md: Conventions)
        self.class_names = list(manifest.classes)
        counts = torch.tensor(manifest.split("train").class_counts, dtype=torch.int64)
        self.env = build.make_env(t, counts.to(info.device), shards, info)
        self.mixer = build.make_mixer(cfg, self.env)
        self.loader, self.val_loader = build.make_loaders(
            shards, t, self.mixer, info, self.epoch, build.loader_resources(cfg["loader"]))
        if resume:  # the loaders hashed every tar for their scan: compare those digests now
            check_contents(self.run_dir, shards)
        # corrupt samples left out of each split (--skip-corrupt; else the loaders refuse them)
        self.skipped = {"skipped_train": int(self.loader.skipped),
                        "skipped_val": int(getattr(self.val_loader, "skipped", 0))}
        if info.is_main and any(self.skipped.values()):
            log.warning("warning: --skip-corrupt: %s", skipped_line(self.skipped))
        self.model, self.criterion = build.make_model_and_criterion(cfg, self.env, self.mixer)
        self.optimizer, self.scheduler = build.make_optimizer(t, self.model, self.criterion,
                                                              len(self.loader))
        cuda_fp16 = info.device.type == "cuda" and t["precision"] == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda_fp16)
        self.autocast = make_autocast(info.device, t["precision"])
        self.train_model = self._wrap(self.model)
        self.sums = EpochSums.zeros(info.device)
        self.watch = DivergenceWatch(info)  # a nan or inf loss stops the run (divergence.py)
        epochs = range(t["epochs"])
        if info.is_main and not any(self.mixer.mixes_in(e, t["epochs"]) for e in epochs):
            schedule = {k: getattr(self.mixer, k) for k in ("mix_schedule", "start_epoch")
                        if hasattr(self.mixer, k)}
            log.warning("warning: mixer %s acts in none of the %d epochs (%s); this run is plain "
                        "training", t["mixer"], t["epochs"],
                        ", ".join(f"{k}={v!r}" for k, v in schedule.items()))
        self.report = RunReport(self.run_dir, enabled=info.is_main)
        if ckpt is not None:
            self._restore(ckpt)
        # resumed after its last epoch, with its results written
        self.finished = ckpt is not None and self.epoch >= t["epochs"] and \
            (self.run_dir / FINAL_JSON).is_file()
        self.report.truncate_from(self.epoch)
        if ckpt is not None and not self.finished and info.is_main:
            print(f"resuming {self.run_dir} at {position(*self.saved, t['epochs'])}", flush=True)
        self.q_cache = getattr(self.loader, "q_cache", None)  # after a resume: the run's own
        if self.q_cache is not None and info.is_main and not self.finished:
            print(self.q_cache.describe(), flush=True)

    # ------------------------------------------------------------------ setup helpers
    def _wrap(self, model):
        net = model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
            net = DDP(model, device_ids=ids)  # buffers from rank 0 before each forward (default)
        if self.t["compile"]:
            net = torch.compile(net)
        return net

    def _counters(self, ckpt: dict) -> tuple[int, int, int]:
        """(epoch, step, step_in_epoch) of a checkpoint, each a non-negative integer."""
        values = tuple(ckpt[k] for k in ("epoch", "step", "step_in_epoch"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise CheckpointError(f"{self.run_dir / LAST}: damaged counters {values!r}")
        return values

    def _check_matches(self, ckpt: dict) -> None:
        path = self.run_dir / LAST
        if not isinstance(ckpt["config"], dict):
            raise CheckpointError(f"{path}: damaged (its config is not a table)")
        diff = changes(ckpt["config"], self.cfg)
        if diff:
            raise CheckpointError(f"{path}: mismatched configuration: {', '.join(diff[:3])}")
        if ckpt["world"] != self.info.world:
            raise CheckpointError(f"{path}: written by {ckpt['world']} processes, "
                                  f"resumed with {self.info.world}")

    def _restore(self, ckpt: dict) -> None:
        for tmp in (self.run_dir / LAST).parent.glob(f".{LAST.name}.tmp*"):  # a save killed midway
            tmp.unlink(missing_ok=True)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.mixer.load_state_dict(ckpt["mixer"])
            self.criterion.load_state_dict(ckpt["criterion"])
            self.loader.load_state_dict(ckpt["loader"][self.info.rank])
            self.sums = EpochSums.from_state(self._own(ckpt["sums"]), self.info.device)
            set_rng_state(self._own(ckpt["rng"]))
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            msg = (str(exc).splitlines() or [exc.__class__.__name__])[0][:200]
            raise CheckpointError(
                f"{self.run_dir / LAST}: does not match this run ({msg})") from None

    def _own(self, saved):
        """This rank's entry of a per-rank list (older checkpoints hold rank 0's only)."""
        return saved[self.info.rank] if isinstance(saved, list) else saved

    def _save(self) -> None:
        # per rank, in one collective: each rank's loader position, share of the epoch's running
        # sums and RNG states
        ranks = gather_objects((self.loader.state_dict(), self.sums.state_dict(), rng_state()),
                               self.info)
        loader_states, sums, rngs = (list(per_rank) for per_rank in zip(*ranks))
        self._stop_if_diverged(weights=True)  # the last checkpoint stays the last good one
        if self.info.is_main:
            save_atomic({
                "format": FORMAT, "config": self.cfg, "world": self.info.world,
                "num_classes": self.env.num_classes, "epoch": self.epoch, "step": self.step,
                "step_in_epoch": self.step_in_epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "mixer": self.mixer.state_dict(),
                "criterion": self.criterion.state_dict(), "loader": loader_states,
                "sums": sums, "rng": rngs,
            }, self.run_dir / LAST)
        self.saved = (self.epoch, self.step, self.step_in_epoch)
        barrier(self.info)

    def _ctx(self, epoch: int, step: int, tag: int = 0) -> StepContext:
        g = step_generator(self.t["seed"], epoch, step, self.info.rank, self.info.device, tag)
        return StepContext(epoch, self.t["epochs"], step, self.env.class_counts, g,
                           model=self.model, aux={})

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        # a CPU run's config has no compute_stream (config.as_used): the default one on CUDA
        try:
            with compute_stream(self.info.device, self.t.get("compute_stream", "high")):
                return self._fit()
        finally:  # a run that diverged or was stopped leaves no TensorBoard writer thread
            self.report.close()

    def _fit(self) -> dict:
        E = self.t["epochs"]
        for epoch in range(self.epoch, E):
            if self.step_in_epoch == 0:  # a fresh epoch (a resumed one keeps its loader position)
                self.loader.set_epoch(epoch)
                self.mixer.on_epoch_start(epoch, self._ctx(epoch, self.step, EPOCH_TAG))
            # a checkpoint taken on the epoch's last step resumes at the epoch's end: its loader
            # already points at the next epoch, so only the record and the save are left
            if self.step_in_epoch < len(self.loader):
                self._train_epoch(epoch)
            self._stop_if_diverged(weights=True)  # before the epoch's line in metrics.jsonl
            # the epoch's line before its checkpoint: a kill between the two redoes the epoch,
            # and resuming drops the line again (the other order could lose it)
            self.report.epoch(self._epoch_record(epoch))
            self.epoch, self.step_in_epoch = epoch + 1, 0
            self.sums = EpochSums.zeros(self.info.device)
            self._save()
        return self._finish()

    def _train_epoch(self, epoch: int) -> None:
        self.model.train()
        seen = []
        bar = tqdm(total=len(self.loader), initial=self.step_in_epoch, disable=self.bars,
                   desc=epoch_label(epoch, self.t["epochs"]), unit="step", leave=False)
        with bar:  # closed (its line cleared) on Ctrl-C too, before the message
            timer, t0 = self._steps(epoch, bar, seen)
        broadcast_buffers(self.model, self.info)  # identical BN statistics for eval and checkpoint
        self._synchronize()
        self.sums.add_timing(timer.collect())
        self.sums.seconds += time.perf_counter() - t0
        if self.dump_ranks:
            np.save(self.run_dir / f"seen-e{epoch}-r{self.info.rank}.npy",
                    np.concatenate(seen) if seen else np.zeros(0, np.int64))

    def _steps(self, epoch: int, bar, seen: list) -> tuple[StepTimer, float]:
        """The epoch's remaining steps, with checkpoints every ckpt_every steps; returns the
        timer and the start of the time not yet added to the sums."""
        t0, n0 = time.perf_counter(), self.sums.samples
        timer = StepTimer(self.info.device)
        for streams in timer.iterate(self.loader):
            if self.dump_ranks:
                seen.append(streams[self.mixer.streams[0]].index.cpu().numpy())
            with timer.step():
                loss, parts, n, changed = train_step(
                    model=self.train_model, mixer=self.mixer, criterion=self.criterion,
                    optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                    streams=streams, ctx=self._ctx(epoch, self.step), autocast=self.autocast)
            self.sums.add(loss, parts, n, changed)
            self.watch.note(loss, self.step)
            self.sums.add_q_cache(streams)
            self.step += 1
            self.step_in_epoch += 1
            bar.update(1)
            rate = (self.sums.samples - n0) * self.info.world / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} img/s", refresh=False)
            if self.watch.due(self.step):
                self._stop_if_diverged()
            if self.t["ckpt_every"] and self.step % self.t["ckpt_every"] == 0:
                self._synchronize()
                self.sums.add_timing(timer.collect())
                self.sums.seconds += time.perf_counter() - t0
                self._save()
                t0, n0 = time.perf_counter(), self.sums.samples
        return timer, t0

    def _stop_if_diverged(self, weights: bool = False) -> None:
        """Raise Diverged (one line: where, and what the last good checkpoint holds) once a
        step's loss, or with ``weights`` the model's weights, became nan or inf."""
        bad = self.watch.first_bad_step(self.model if weights else None, self.step)
        if bad is None:
            return
        epochs = self.t["epochs"]
        where = f"step {bad + 1}, {epoch_label(bad // len(self.loader), epochs)}"
        kept = (f"{self.run_dir / LAST} ({position(*self.saved, epochs)}) is the last good "
                "checkpoint" if self.saved is not None else "no checkpoint was written")
        raise Diverged(f"the run diverged: the training loss or the weights became nan or inf "
                       f"in {where}, and the run stopped (a lower --lr may help); {kept}; no "
                       "final results were written")

    def _synchronize(self) -> None:
        if self.info.device.type == "cuda":
            torch.cuda.synchronize()

    def _epoch_record(self, epoch: int) -> dict:
        s = self.sums
        totals = torch.stack([s.loss, s.changed.to(s.loss.dtype)] + [
            torch.tensor(float(v), device=self.info.device)
            for v in (s.samples, s.wait_ms, s.idle_ms, s.timed_steps, s.q_served, s.q_drawn)])
        parts = torch.stack(list(self.sums.parts.values())) if self.sums.parts else None
        all_reduce_sum(totals, self.info)
        if parts is not None:
            all_reduce_sum(parts, self.info)
        loss, changed, samples, wait_ms, idle_ms, steps, q_served, q_drawn = totals.tolist()
        record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
                  "train_loss": loss / max(samples, 1.0),
                  # the share of the epoch's samples whose image the mixer changed
                  "mixed_share": changed / max(samples, 1.0)}
        if parts is not None:
            record.update({f"loss_{k}": float(v) / max(samples, 1.0)
                           for k, v in zip(self.sums.parts, parts)})
        due = (epoch + 1) % self.t["eval_every"] == 0 or epoch + 1 == self.t["epochs"]
        record.update(dict.fromkeys(("top1", "many", "medium", "few")))  # null: not evaluated
        if due and self.val_loader is not None:
            result = self._evaluate()
            record.update({k: result[k] for k in ("top1", "many", "medium", "few")})
        record["images_per_s"] = samples / max(self.sums.seconds, 1e-9)
        record["seconds"] = self.sums.seconds
        # is the device waiting for data? (mean over ranks and steps; train/step_timer.py)
        record["data_wait_ms_per_step"] = wait_ms / max(steps, 1.0)
        record["device_idle_ms_per_step"] = idle_ms / max(steps, 1.0)
        # its tail over every rank's steps: a loader that stalls now and then shows here
        waits = tail([w for rank in gather_objects(s.waits, self.info) for w in rank])
        record.update({f"data_wait_ms_{k}": v for k, v in waits.items()})
        record.update(self.skipped)
        if self.q_cache is not None:  # the share of Q's draws the cache served (all ranks)
            record["q_cache_coverage"] = q_served / q_drawn if q_drawn else None
            record["q_cache_coverage_expected"] = self.q_cache.expected
        if self.info.is_main:
            tqdm.write(epoch_line(record, self.t["epochs"]))
        return record

    def _evaluate(self) -> dict:
        correct, total = class_hits(self.model, self.val_loader, self.env.num_classes,
                                    self.info.device, self.autocast, self.info)
        return summarize(correct, total, self.env.class_counts.tolist())

    def _finish(self) -> dict:
        counts = self.env.class_counts.tolist()
        if self.val_loader is None:
            raise CheckpointError(f"{self.env.shards}: no val split to evaluate on")
        result = self._evaluate()
        rates = [json.loads(ln)["images_per_s"] for ln in self.report.lines()]
        result.update({"epochs": self.t["epochs"],
                       "images_per_s": float(np.mean(rates)) if rates else None,
                       "class_counts": counts, **self.skipped,
                       "per_class_named": named_per_class(result["per_class"], counts,
                                                          self.class_names)})
        if self.dump_ranks:  # every rank's final weights, to compare across DDP ranks
            torch.save(self.model.state_dict(), self.run_dir / f"params-r{self.info.rank}.pt")
        if self.info.is_main:
            save_atomic({"format": FORMAT, "config": self.cfg, "num_classes": self.env.num_classes,
                         "model": self.model.state_dict()}, self.run_dir / FINAL)
            self.report.final(result, counts, method=self._method())
            print(format_table(result, counts), flush=True)
            if any(self.skipped.values()):
                print(skipped_line(self.skipped), flush=True)
            print(self.report.written_line(self.run_dir / FINAL), flush=True)
        barrier(self.info)
        return result

    def _method(self) -> str:
        """"mixer cmo, loss bs" (and the re-weighting when there is one), for the plot's title."""
        t = self.t
        reweight = f", reweight {t['reweight']}" if t["reweight"] != "none" else ""
        return f"mixer {t['mixer']}, loss {t['loss']}{reweight}"


def skipped_line(skipped: dict) -> str:
    return (f"skipped {skipped['skipped_train']} corrupt train and {skipped['skipped_val']} "
            "corrupt val samples (--skip-corrupt)")


def epoch_line(record: dict, epochs: int) -> str:
    """One readable line per epoch (the full record is metrics.jsonl's)."""
    shown = [f"{k} {record[k]:.4g}" for k in SHOWN if isinstance(record.get(k), float)]
    return f"{epoch_label(record['epoch'], epochs)}: " + ", ".join(shown)
