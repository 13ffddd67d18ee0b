"""``python tests/train_stopped_at.py STEP HOW ARGS...``: ``python -m ltpipe.train ARGS`` in this
process, stopped by a real signal right after optimizer step STEP and its checkpoint, at the
moment the trainer asks the loader for the next batch. The product carries no test hooks; this
wrapper (test code) patches them in from outside, so the kill points are exact and repeatable.

HOW: ``kill`` (SIGKILL to this process, as an OOM kill or a dead node), ``ctrl-c`` (SIGINT to
the process group, as a terminal sends it), ``term`` (SIGTERM to this process, as ``kill PID``)
or ``term-group`` (SIGTERM to the process group, as a batch scheduler sends it). Under torchrun
every rank runs the wrapper and stops itself at the same step.
"""

import os
import runpy
import signal
import sys

SENDS = {
    "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "ctrl-c": lambda: os.killpg(os.getpgrp(), signal.SIGINT),
    "term": lambda: os.kill(os.getpid(), signal.SIGTERM),
    "term-group": lambda: os.killpg(os.getpgrp(), signal.SIGTERM),
}


def main() -> None:
    stop_after, send = int(sys.argv[1]), SENDS[sys.argv[2]]
    # Ctrl-C as from a terminal: a shell that runs the tests in the background starts them with
    # SIGINT ignored, this process inherits that, and Python then installs no KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ltpipe.train import trainer
    from ltpipe.train.step_timer import StepTimer

    done = [0]  # optimizer steps of the run so far (a resumed run counts from its checkpoint)
    real_step, real_iterate = trainer.train_step, StepTimer.iterate

    def train_step(**kw):
        out = real_step(**kw)
        done[0] = kw["ctx"].step + 1
        return out

    def iterate(self, loader):
        for item in real_iterate(self, loader):
            yield item
            if done[0] == stop_after:  # the step and its checkpoint are done
                send()

    trainer.train_step, StepTimer.iterate = train_step, iterate
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    runpy.run_module("ltpipe.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
