"""Q's DALI worker processes do not outlive a SIGKILLed trainer (pipeline/worker_lifetime.py)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

# The child plays the trainer. It restores Python's Ctrl-C handler (a shell that runs the tests
# in the background ignores SIGINT, and the child would inherit that), and says "ready" only
# inside its ``try``, so a SIGINT sent on "ready" always meets the handler. Its wait is bounded.
SCRIPT = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ltpipe.pipeline.loader import make_loader
    loader = make_loader(sys.argv[1], batch_size=4, streams=("uniform", "minority"),
                         num_threads=1, py_workers=2)
    next(iter(loader))
    try:
        print("ready", flush=True)
        time.sleep(30)
        print("timeout", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended while we listed them (DALI's come and go)
            continue
        found += [int(c) for c in text]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def start(shards, **kwargs):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(shards)], stdout=subprocess.PIPE,
                            text=True, **kwargs)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_workers_exit_when_the_trainer_is_killed(tiny_shards):
    proc = start(tiny_shards)
    try:
        workers = children(proc.pid)
        assert len(workers) >= 2  # DALI's py_workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if alive(w)]
        for w in left:  # do not leave them behind when the assertion fails
            os.kill(w, signal.SIGKILL)
        assert not left, f"DALI workers outlived the trainer: {left}"
    finally:
        proc.kill()


FORKS = textwrap.dedent("""
    import os, time
    from ltpipe.pipeline.worker_lifetime import tied_at_fork

    def child():
        if (pid := os.fork()) == 0:  # a worker that never gets a task: it only waits
            time.sleep(60)
            os._exit(0)
        return pid

    with tied_at_fork():
        tied = child()
    untied = child()
    print(tied, untied, flush=True)
    time.sleep(60)
""")


def test_a_worker_forked_in_the_block_dies_with_its_parent_before_any_task():
    """The kernel kills what the loader forked even if it never ran a line of ltpipe (a worker
    whose first task had not come when the trainer was SIGKILLed used to live on); a fork after
    the block is left alone."""
    proc = subprocess.Popen([sys.executable, "-c", FORKS], stdout=subprocess.PIPE, text=True)
    tied, untied = (int(pid) for pid in proc.stdout.readline().split())
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while alive(tied) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(tied), "a process forked in tied_at_fork outlived its parent"
        assert alive(untied), "a fork outside tied_at_fork was tied too"
    finally:
        for pid in (tied, untied):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_is_left_to_the_trainer(tiny_shards, tmp_path):
    """Ctrl-C signals the whole process group: the workers stay quiet (no KeyboardInterrupt
    traceback each) and end with the trainer."""
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        proc = start(tiny_shards, stderr=fh, start_new_session=True)
        try:
            workers = children(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.stdout.readline().strip() == "interrupted"
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "Traceback" not in err.read_text(), err.read_text()[-2000:]
    assert not [w for w in workers if alive(w)]


def ignored(pid: int, signum: int = signal.SIGINT) -> bool:
    """The kernel's view: is ``signum`` (bit signum - 1 of SigIgn) ignored by process ``pid``?"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    raise AssertionError(f"/proc/{pid}/status has no SigIgn")


def build_q_pipeline(shards):
    """A DALI pipeline of Q alone whose 2 reader processes are forked as the loader's are."""
    from ltpipe.pipeline.dali_graph import GraphSpec, build_pipeline
    from ltpipe.pipeline.minority import MinorityDraws, MinoritySource, ShardBytes
    from ltpipe.pipeline.shardset import open_split

    data = open_split(shards, "train")
    draws = MinorityDraws.for_r(data.labels, data.class_counts, 1.0, seed=0, rank=0)
    source = MinoritySource(draws, ShardBytes(data.rows, data.tar_paths), 4, 10, 0)
    spec = GraphSpec(batch_size=4, preset="cifar", size=32, train=True, device="cpu", half=False,
                     channels_last=False, num_threads=1, prefetch=2, seed=0, device_id=None,
                     py_workers=2)
    return build_pipeline(spec, None, {"minority": source})


def handlers_now() -> dict:
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def test_workers_ignore_ctrl_c_and_sigterm_from_birth(tiny_shards):
    """Before any task reaches them (a worker may get its first only later in the run), Q's
    workers already ignore SIGINT and SIGTERM (a scheduler's SIGTERM to the process group is the
    trainer's to handle); the building process keeps its own handlers."""
    before = set(children(os.getpid()))
    handlers = handlers_now()
    pipe = build_q_pipeline(tiny_shards)
    try:
        workers = [w for w in children(os.getpid()) if w not in before]
        assert len(workers) >= 2
        assert all(ignored(w, s) for w in workers for s in handlers)
        assert handlers_now() == handlers
    finally:
        del pipe


def test_the_trainer_keeps_its_handlers_while_a_pipeline_is_built(tiny_shards, monkeypatch):
    """A SIGTERM or Ctrl-C that comes while a pipeline is built still reaches the trainer: a
    pipeline without reader processes (P alone, the val split) changes no handler, and one that
    forks Q's readers ties them at birth instead (test above), so neither ignores the signal
    (it used to, for about a second at every evaluation: a scheduler's SIGTERM was lost)."""
    from nvidia.dali.pipeline import Pipeline

    from ltpipe.pipeline.loader import make_loader

    seen, build = [], Pipeline.build

    def spying_build(self, *args, **kwargs):
        seen.append(handlers_now())
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "build", spying_build)
    mine = handlers_now()
    val = make_loader(tiny_shards, split="val", batch_size=4, num_threads=1)
    next(iter(val))
    del val
    pipe = build_q_pipeline(tiny_shards)
    del pipe
    assert len(seen) >= 2 and all(handlers == mine for handlers in seen)


class _Cycle:
    """Garbage with a finaliser that reports where it ran (stands in for a DALI Pipeline)."""

    def __init__(self, fd):
        self.fd, self.me = fd, self

    def __del__(self):
        os.write(self.fd, b"child" if os.getpid() != PARENT[0] else b"parent")


PARENT = [os.getpid()]


@pytest.mark.parametrize("guarded", [True, False])
def test_no_garbage_of_the_parent_is_collected_in_a_forked_worker(guarded):
    """Unreachable cycles are finalised in the parent before the fork (no_garbage_across_fork);
    unguarded, the child's first collection runs their finaliser (the segfault's path)."""
    import gc

    from ltpipe.pipeline.worker_lifetime import no_garbage_across_fork

    PARENT[0] = os.getpid()
    read, write = os.pipe()
    gc.disable()  # the cycle must still be garbage when the fork comes
    try:
        _Cycle(write)
        with no_garbage_across_fork() if guarded else contextlib.nullcontext():
            pid = os.fork()
            if pid == 0:  # the worker: collect, as a DALI worker's allocations soon would
                gc.collect()
                os._exit(0)
        os.waitpid(pid, 0)
    finally:
        gc.enable()
        gc.collect()  # the unguarded parent's own copy
    os.close(write)
    seen = os.read(read, 64)
    os.close(read)
    assert (b"child" in seen) is not guarded
    assert seen.startswith(b"parent") is guarded


def test_a_failing_test_with_workers_alive_ends_the_run(tmp_path):
    """A failed test's traceback keeps its loader, and Q's workers, alive to the end of the
    session; Python's exit would wait for them for ever (tests/conftest.py ends them), and CI
    would hang instead of failing."""
    import shutil

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_fails.py").write_text(textwrap.dedent("""
        from ltpipe.pipeline.loader import make_loader

        def test_fails_with_workers_alive(tiny_shards):
            loader = make_loader(tiny_shards, batch_size=4, streams=("uniform", "minority"),
                                 num_threads=1, py_workers=2)
            next(iter(loader))
            assert False
    """))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(tmp_path)], capture_output=True, text=True, timeout=90,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("a failing run with Q's workers alive did not end")
    assert done.returncode == 1 and "1 failed" in done.stdout
