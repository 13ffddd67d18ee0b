"""README's "Use ltpipe in your own training loop" block runs as printed (on tiny shards, one
epoch, a small batch), so the README cannot drift from the API."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"
SETTINGS = 'shards, epochs, batch = "out/synthetic", 30, 64'


def readme_loop() -> str:
    text = README.read_text()
    section = text.split("## Use ltpipe in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_loop_trains(tiny_shards, one_torch_thread):
    code = readme_loop()
    assert len(code.strip().splitlines()) <= 25  # "a complete example of at most 25 lines"
    assert SETTINGS in code
    # 65 train samples: batch 10 leaves a last batch of 5 (resnet18's BatchNorm at 32 px, 1x1
    # after layer4, cannot train on a batch of one)
    code = code.replace(SETTINGS, f"shards, epochs, batch = {str(tiny_shards)!r}, 1, 10")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["step"] == len(scope["loader"]) > 0
    assert torch.isfinite(scope["loss"])
    assert scope["mixed"].images.shape[1:] == (3, 32, 32)
