"""Errors that reach the user as one line and exit code 2 (bad input)."""


class KvbenchError(Exception):
    """A user-facing error: the CLI prints ``kvbench: error: <message>`` and exits 2.

    Raise it for bad input (unknown model or format, a page larger than its tier,
    an unusable directory, a malformed result file). Anything else is a bug and
    keeps its traceback.
    """

    exit_code = 2


class TierUnavailable(KvbenchError):
    """A tier cannot be used on this machine, or cannot hold what was asked."""


class Skip(Exception):
    """Raised by a case (or a mover it uses) that cannot run here; the message is the
    reason, recorded in the result. Not an error: the run goes on."""
