"""The shard writer's errors: bad user input (SOURCE, options, OUT), and a worker that died."""


class ShardInputError(ValueError):
    """Bad SOURCE, option value or OUT directory; the message is one line naming the culprit.
    ``ltpipe shard`` prints it as ``Error: ...`` and exits with code 2."""


class ShardWorkerError(RuntimeError):
    """An encoding worker process died; one line. ``ltpipe shard`` exits with code 1, and the
    same command resumes."""
