"""Run outputs (rank 0 only): metrics.jsonl, final.json, per_class.png, TensorBoard events.

metrics.jsonl has one line per epoch: epoch (from 0, as the checkpoint, the LR schedule and the
recipes' epoch numbers count; the console shows both, "epoch 0 (1/30)", see ``epoch_label``), lr,
train_loss,
mixed_share (the share of the epoch's samples whose image the mixer changed: M2m's accepted
translations), top1, many, medium, few (null in epochs not evaluated), images_per_s, seconds,
data_wait_ms_per_step, device_idle_ms_per_step and the wait's tail over the epoch's steps,
data_wait_ms_p50 / _p99 / _max (train/step_timer.py), skipped_train and
skipped_val (corrupt samples left out under --skip-corrupt, 0 otherwise; final.json has them too),
plus the loss parts.
Resuming truncates lines from epochs that will run again, so a resumed run's file equals an
uninterrupted one's (but for the timings). A line is appended with one write and fsynced; a last
line torn all the same (a kill or a power cut mid-write) is dropped with a warning on resume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ltpipe.shards.bounded import ParseError, parse_json, read_bytes
from ltpipe.train.outputs import json_text, write_text_atomic

METRICS = "metrics.jsonl"
FINAL = "final.json"
PER_CLASS_PNG = "per_class.png"
METRICS_MAX_BYTES = 256 << 20  # a line per epoch, about 1 KB each
ZERO_STUB, ZERO_COLOR = 2.0, "#ff7f0e"  # per_class.png: the bar of a class at 0 % (% high)

log = logging.getLogger(__name__)


class MetricsError(ValueError):
    """metrics.jsonl is damaged before its last line (the message names the file and line)."""


class RunReport:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tensorboard = enabled and tensorboard
        self._tb = None  # opened with the first epoch: a run that trains nothing writes nothing

    def _writer(self):
        if self._tb is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb

    def lines(self) -> list[str]:
        """The epoch records' lines; a torn last line is left out with a warning."""
        path = self.run_dir / METRICS
        if not self.enabled or not path.is_file():
            return []
        return [line for line, _ in self._parsed(path)]

    @staticmethod
    def _parsed(path: Path) -> list[tuple[str, dict]]:
        try:
            text = read_bytes(path, METRICS_MAX_BYTES, "metrics.jsonl").decode(errors="replace")
        except ParseError as exc:
            raise MetricsError(str(exc)) from None
        lines = [ln for ln in text.splitlines() if ln.strip()]
        out = []
        for i, line in enumerate(lines):
            try:  # NaN: lines of runs written before non-finite losses stopped a run
                record = parse_json(line, f"{path}:{i + 1}", allow_nan=True)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                if i + 1 < len(lines):  # only the last line can be cut by a kill
                    raise MetricsError(f"{path}: line {i + 1} is not an epoch record; move the "
                                       "file away to resume without it") from None
                log.warning("warning: %s: dropped a torn last line (a write was cut short)", path)
                continue
            out.append((line, record))
        return out

    def truncate_from(self, epoch: int) -> None:
        """Drop metrics lines of epochs >= ``epoch`` (they will be produced again) and a torn
        last line."""
        path = self.run_dir / METRICS
        if not self.enabled or not path.is_file():
            return
        text = "".join(line + "\n" for line, r in self._parsed(path) if r["epoch"] < epoch)
        if text != path.read_text(errors="replace"):
            write_text_atomic(path, text)

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        # one write of the whole line, then fsync: a kill leaves the line whole or absent
        fd = os.open(self.run_dir / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json_text(record) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tb = self._writer()
        if tb is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    tb.add_scalar(key, value, record["epoch"])
            tb.flush()

    def final(self, result: dict, train_counts, method: str = "") -> None:
        """final.json and per_class.png; ``method``: e.g. "mixer cmo, loss bs", for the title."""
        if not self.enabled:
            return
        write_text_atomic(self.run_dir / FINAL, json_text(rounded(result), indent=2) + "\n")
        title = ": ".join(x for x in (self.run_dir.name, method) if x)
        title += f", top-1 {result['top1']:.1f} %"
        plot_per_class(result["per_class"], train_counts, self.run_dir / PER_CLASS_PNG, title)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (and its thread), however the run ended."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def written_line(self, weights: Path) -> str:
        """Where a finished run's results are, printed at its end."""
        d = self.run_dir
        return (f"wrote {d / FINAL}, {d / PER_CLASS_PNG} and {weights} "
                f"(per epoch: {d / METRICS})")


def epoch_label(epoch: int, epochs: int) -> str:
    """"epoch 0 (1/30)": metrics.jsonl's epoch (from 0), then the count a reader expects."""
    return f"epoch {epoch} ({epoch + 1}/{epochs})"


def position(epoch: int, step: int, step_in_epoch: int, epochs: int) -> str:
    """Where a checkpoint's counters stand, in the console's words: "epoch 1 (2/30), step 8"
    (mid-epoch), "the start of epoch 2 (3/30), step 12", "the end of epoch 29 (30/30), ..."."""
    if epoch >= epochs:
        return f"the end of {epoch_label(epochs - 1, epochs)}, step {step}"
    where = epoch_label(epoch, epochs)
    return f"the start of {where}, step {step}" if step_in_epoch == 0 else f"{where}, step {step}"


def named_per_class(per_class, train_counts, class_names) -> list[dict]:
    """final.json's per-class accuracy with each class's id, name and training size
    ("per_class" keeps the bare list, indexed by class id)."""
    return [{"class": k, "name": str(name), "n_train": int(n), "top1": acc}
            for k, (name, n, acc) in enumerate(zip(class_names, train_counts, per_class))]


def rounded(value, digits: int = 6):
    """Floats to ``digits`` decimals (56.00000000000001 -> 56.0), in nested dicts and lists."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def plot_per_class(per_class, train_counts, path: Path, title: str = "") -> None:
    """Per-class accuracy (bars) against the class's training size (line, log scale), with the
    Many/Medium/Few boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ltpipe.shards.longtail import GROUPS, group_of

    order = sorted(range(len(train_counts)), key=lambda k: -train_counts[k])
    acc = [per_class[k] if per_class[k] is not None else 0.0 for k in order]
    fig, ax = plt.subplots(figsize=(max(6, len(order) * 0.05 + 4), 3.5))
    ax.bar(range(len(order)), acc, width=1.0, color="tab:blue", alpha=0.7)
    # a class at 0 % has no bar: a stub of its own colour shows it was evaluated and missed
    zero = [i for i, k in enumerate(order) if per_class[k] == 0]
    if zero:
        ax.bar(zero, [ZERO_STUB] * len(zero), width=1.0, color=ZERO_COLOR, label="0 %")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    groups = [group_of(int(train_counts[k])) for k in order]
    for g in GROUPS:  # classes are sorted by size, so each group is one run of bars
        idx = [i for i, x in enumerate(groups) if x == g]
        if idx:
            if idx[0] > 0:
                ax.axvline(idx[0] - 0.5, color="black", lw=0.8, ls="--")
            ax.text((idx[0] + idx[-1]) / 2, 1.01, g.capitalize(), ha="center", va="bottom",
                    fontsize=8, transform=ax.get_xaxis_transform())  # above the bars
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10, pad=16)
    ax.set_xlabel("class (sorted by training size)")
    ax.set_ylabel("val accuracy %")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(range(len(order)), [train_counts[k] for k in order], color="tab:red")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images", color="tab:red")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
