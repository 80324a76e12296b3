"""`detrdistill export --format onnx`: a detector as an ONNX graph (`DeployGraph`), written
only once onnxruntime reproduces PyTorch on it within a tolerance (`onnx_check`), with the
model's class names and sizes in its metadata. Nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.deploy.graph import DeployGraph
from orchestrator.errors import UserInputError

logger = logging.getLogger("detrdistill")
MIN_OPSET = 17  # grid_sample (deformable attention) needs 16; the exporter writes 18
METADATA_KEY = "detrdistill"
MIN_SIDE, MAX_SIDE = 96, 4096  # the range of a dynamic export's height and width


@dataclass
class ExportOptions:
    size: tuple[int, int] | None = None  # static (H, W); None: the model's eval size, square
    dynamic: bool = False  # any height and width in [MIN_SIDE, MAX_SIDE]
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 18
    postprocess: bool = False
    top_k: int = 100
    tolerance: float = 1e-3
    check_images: list[Path] = field(default_factory=list)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing); "
            "install them with `pip install 'detrdistill[deploy]'`"
        ) from None


def export_onnx(
    model: nn.Module, extra: dict[str, Any], out: Path, options: ExportOptions
) -> dict[str, Any]:
    """Write `model` as ONNX to `out` and return the export report (sizes checked, max
    differences, opset, file size). Raises UserInputError (nothing written) when the graph
    cannot be exported or onnxruntime disagrees with PyTorch beyond the tolerance."""
    from orchestrator.deploy.onnx_check import check_parity

    require_onnx()
    if options.opset < MIN_OPSET:
        raise UserInputError(
            f"--opset {options.opset}: too old; the deformable attention's grid_sample needs "
            f"opset 16 and this export supports {MIN_OPSET} and later (default 18)"
        )
    if options.batch < 1 or options.top_k < 1:
        raise UserInputError("--batch and --top-k must be at least 1")
    graph = DeployGraph(model.eval(), options.postprocess, options.top_k).eval()
    height, width = options.size or (int(extra.get("eval_size", 640)),) * 2
    if options.dynamic and not MIN_SIDE <= min(height, width) <= max(height, width) <= MAX_SIDE:
        raise UserInputError(
            f"--size {height} {width}: a dynamic graph reads sides of {MIN_SIDE}-{MAX_SIDE} px"
        )
    example = torch.rand(options.batch, 3, height, width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        _trace(graph, example, partial, options, extra.get("architecture", "model"))
        opset = _stamp(partial, extra, options)
        if opset != options.opset:
            logger.warning(
                f"asked for opset {options.opset}; the converter could not lower every operator, "
                f"so the file is opset {opset}"
            )
        report = check_parity(graph, partial, example, options)
        report.update(opset=opset, megabytes=round(partial.stat().st_size / 1e6, 2))
        os.replace(partial, out)
    finally:
        for leftover in (partial, partial.with_name(partial.name + ".data")):
            leftover.unlink(missing_ok=True)
    return report


def _trace(
    graph: DeployGraph, example: torch.Tensor, target: Path, options: ExportOptions, name: str
) -> None:
    dims: dict[int, Any] = {}
    if options.dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=64)
    if options.dynamic:
        dims[2] = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
        dims[3] = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    chatter = io.StringIO()
    names = ("onnxscript", "torch.onnx", "torch.export", "torch._guards", "torch._dynamo")
    quiet = [logging.getLogger(name) for name in names]
    levels = [log.level for log in quiet]
    try:
        for log in quiet:  # the exporter's progress and optimiser notes are not the user's news
            log.setLevel(logging.CRITICAL)  # a failure is reported below, in one line
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(target),
                dynamo=True,
                opset_version=options.opset,
                input_names=["images"],
                output_names=list(graph.output_names),
                dynamic_shapes={"images": dims} if dims else None,
                external_data=False,
            )
    except Exception as err:
        detail = _first_line(err)
        hint = "; try without --dynamic-batch (a fixed --batch)" if options.dynamic_batch else ""
        raise UserInputError(f"cannot export this {name} to ONNX: {detail}{hint}") from None
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)


def _stamp(path: Path, extra: dict[str, Any], options: ExportOptions) -> int:
    """Write what inference needs into the file's metadata; returns its opset."""
    import onnx

    model = onnx.load(str(path))
    meta = {
        key: extra[key]
        for key in ("architecture", "class_names", "label_to_category", "eval_size", "max_size")
        if key in extra
    }
    meta.update(
        eval_square=bool(extra.get("eval_square", False)),
        postprocess=options.postprocess,
        top_k=options.top_k,
        pixels="RGB float in [0, 1], ImageNet normalisation inside the graph",
    )
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(model, str(path))
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _first_line(err: BaseException) -> str:
    """The line of an exporter error that says what went wrong (torch.export puts it under an
    "Exception summary" heading, after pages of advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    summary = [line for line in lines if line.startswith("<class ")]
    return (summary or lines or [type(err).__name__])[0][:300]
