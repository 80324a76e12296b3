"""Errors raised for bad user input: the CLI prints their message (no traceback) and exits 2."""


class UserInputError(ValueError):
    """A problem in something the user gave us (spec, dataset, checkpoint, argument).

    The message must name the file, the offending entry or field, and the fix.
    """


class DatasetError(UserInputError):
    """A COCO dataset that cannot be used: missing files, broken json, dangling references."""


EXIT_BAD_INPUT = 2  # the CLI's exit code for a UserInputError


class RunFailed(RuntimeError):
    """A run that ended in a known way (divergence, ...): the CLI prints the message, which
    says what happened and what to try, and exits 1 without a traceback."""


DIVERGED = "training diverged"  # how the engine's divergence message starts (found through Ray)


class RunStopped(RuntimeError):
    """A run stopped by Ctrl-C (SIGINT) or SIGTERM; its MLflow run is closed as KILLED. The
    CLI prints one line and exits 128 + the signal number (130, 143)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(
            "stopped; the MLflow run is closed as KILLED. Run the same command again to resume "
            "from the last checkpoint (or add --restart to start over)"
        )
