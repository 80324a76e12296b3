"""Deploying a student: ONNX export with a parity check, onnxruntime inference, and the model's
size and speed (parameters, GFLOPs, latency)."""
