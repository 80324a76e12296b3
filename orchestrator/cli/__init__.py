"""The `detrdistill` command line: one parser module per command group."""
