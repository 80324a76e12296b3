"""The only door to Ray: Ray init, the Train worker, run, sweep, submit, compare, eval/predict
and export of a trained student."""
