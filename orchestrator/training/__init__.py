"""Training without Ray: assembling a run from a spec, the epoch engine, the fit loop with its
typed state, reporters (a local one included), checkpoints and model sources."""
