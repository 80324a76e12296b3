"""Orchestration of distillation experiments: specs, data, evaluation, training, and the Ray/MLflow launch layer."""
