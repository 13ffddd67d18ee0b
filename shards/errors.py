"""The one error type of the shard writer's user input (SOURCE, options, OUT)."""


class ShardInputError(ValueError):
    """Bad SOURCE, option value or OUT directory; the message is one line naming the culprit.
    ``ltpipe shard`` prints it as ``Error: ...`` and exits with code 2."""
