"""``python -m ltpipe.train ...`` (what torchrun launches) is ``ltpipe train ...``."""

from ltpipe.train.train_cli import train

if __name__ == "__main__":
    train()
