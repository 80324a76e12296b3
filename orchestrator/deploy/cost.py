"""What a detector costs to deploy: parameters, GFLOPs at an input size, and latency at batch 1
on the CPU, in PyTorch and in onnxruntime (median of timed runs after warm-up, threads stated).

GFLOPs count what torch.utils.flop_counter counts (matmuls, convolutions, attention; a
multiply-add is 2 FLOPs) plus grid_sample, which it leaves out: each bilinear sample reads 4
values per channel, 8 FLOPs per output value. So deformable attention's sampling is counted;
elementwise operations are not, as in the usual counters."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.deploy.graph import DeployGraph

BILINEAR_FLOPS = 8  # 4 neighbours x (multiply + add) per output value


def _grid_sample_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    batch, channels = input_shape[:2]
    points = grid_shape[1] * grid_shape[2]
    return BILINEAR_FLOPS * batch * channels * points


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, height: int, width: int) -> float:
    """Forward GFLOPs of one [1,3,H,W] image (eval mode, no grad)."""
    counter = FlopCounterMode(
        display=False,
        custom_mapping={torch.ops.aten.grid_sampler_2d: _grid_sample_flops},
    )
    graph = DeployGraph(model).eval()
    with counter, torch.no_grad():
        graph(torch.rand(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def torch_latency_ms(
    model: nn.Module, height: int, width: int, runs: int = 10, warmup: int = 2
) -> float:
    graph = DeployGraph(model).eval()
    images = torch.rand(1, 3, height, width)
    with torch.no_grad():
        return _median_ms(lambda: graph(images), runs, warmup)


def onnx_latency_ms(
    path: Path, height: int, width: int, runs: int = 10, warmup: int = 2, threads: int = 0
) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": torch.rand(1, 3, height, width).numpy()}
    return _median_ms(lambda: session.run(None, feed), runs, warmup)


def _median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def deploy_cost(
    model: nn.Module,
    extra: dict[str, Any],
    size: int | None = None,
    runs: int = 10,
    onnx_path: Path | None = None,
) -> dict[str, Any]:
    """Parameters, GFLOPs, PyTorch and onnxruntime CPU latency at batch 1 of a square
    `size` (default: the model's eval size), with the thread count. The ONNX file is a dynamic
    export (checked like any export), kept at `onnx_path` when given."""
    from orchestrator.deploy.onnx_export import MIN_SIDE, ExportOptions, export_onnx

    side = size or int(extra.get("eval_size", 640))
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "params_M": parameters(model) / 1e6,
        "gflops": gflops(model, side, side),
        "size": side,
        "threads": threads,
        "torch_ms": torch_latency_ms(model, side, side, runs),
    }
    with tempfile.TemporaryDirectory(prefix="detrdistill-cost-") as folder:
        path = onnx_path or Path(folder) / "model.onnx"
        # dynamic where the size allows it (eval may resize to other shapes), else static
        options = ExportOptions(size=(side, side), dynamic=side >= MIN_SIDE)
        report = export_onnx(model, extra, path, options)
        result["onnx_ms"] = onnx_latency_ms(path, side, side, runs, threads=threads)
        result["onnx_max_diff"] = max(
            v for k, v in report["max_diff"].items() if k != "labels_differ"
        )
        result["onnx_MB"] = report["megabytes"]
        result["onnx_swapped"] = report["swapped"]
    return result


def describe_cost(cost: dict[str, Any]) -> str:
    """One line: size and speed as the registry and the comparison table state them."""
    return (
        f"{cost['params_M']:.2f} M parameters, {cost['gflops']:.2f} GFLOPs at "
        f"{cost['size']}x{cost['size']}; CPU latency at batch 1 ({cost['threads']} threads, "
        f"median of timed runs): onnxruntime {cost['onnx_ms']:.1f} ms, PyTorch "
        f"{cost['torch_ms']:.1f} ms; ONNX {cost['onnx_MB']} MB, max |diff| vs PyTorch "
        f"{cost['onnx_max_diff']:.1e}"
    )
