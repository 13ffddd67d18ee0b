"""What the `ltpipe train` tests share: tiny shards, options for a fast run, the command run
in-process, and the wrapper that stops a training process at an exact step."""

from pathlib import Path

from click.testing import CliRunner

from ltpipe.shards.write import write_shards
from ltpipe.train.train_cli import train

# 4 classes (48/24/12/6 train images, 12 val each), 16 px: 6 steps of 16 per epoch
TINY = dict(classes=4, max_per_class=48, imbalance=8, image_size=16, seed=0)
# no --lr here: a test that sets its own must not be overridden by a later one
FAST = ["--model", "resnet8", "--batch-size", "16", "--warmup", "0", "--no-channels-last",
        "--no-progress", "--preset", "cifar", "--image-size", "16"]
# `python -m ltpipe.train`, stopped by a real signal right after a given step
STOPPED_AT = str(Path(__file__).with_name("train_stopped_at.py"))


def write_tiny(out: Path, **changes) -> Path:
    write_shards("synthetic", out, progress=False, **{**TINY, **changes})
    return out


def invoke(*args):
    """`ltpipe train ARGS` in this process; an exception other than the exit is raised."""
    result = CliRunner().invoke(train, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result
