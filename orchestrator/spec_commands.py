"""`detrdistill validate` and `detrdistill schema` (placeholder until written)."""


def add_spec_commands(commands) -> None:
    """Register the spec subcommands on the top-level subparsers."""
