"""Experiment specs: the pydantic sections, YAML loading with `--set` overrides, messages that
name the file, line and field, path resolution, and the Tune search space."""
