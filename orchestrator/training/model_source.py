"""Where weights come from: `models:/<name>/<version>`, `models:/<name>@<alias>`,
`runs:/<run id>/<path>`, a local model file, or a pretrained Hugging Face checkpoint
(`hf:<org>/<name>[@revision]` or a local model folder), imported on the fly. Model files load
with `torch.load(weights_only=True)`, checkpoints from safetensors; no pickled code is ever
executed to load weights."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from detr_models.build import build_model
from detr_models.config import ModelConfig, model_config_from_dict
from orchestrator.errors import UserInputError
from orchestrator.spec.paths import default_tracking_uri
from orchestrator.training.checkpoints import MODEL_FILE, load_weights, read_model_file

MLFLOW_PREFIXES = ("models:/", "runs:/")


def is_mlflow_uri(source: str) -> bool:
    """True for the MLflow model sources (`models:/...`, `runs:/...`), False for files."""
    return source.startswith(MLFLOW_PREFIXES)


def is_hf_source(source: str) -> bool:
    """`hf:<org>/<name>` or a local Hugging Face model folder (config.json inside)."""
    return source.startswith("hf:") or (Path(source) / "config.json").is_file()


def check_source_syntax(source: str) -> str | None:
    """A problem with the form of a weights source, or None (no network, no files touched)."""
    if source.startswith("hf:"):
        repo = source[3:].partition("@")[0]
        ok = repo.count("/") == 1 and all(repo.split("/"))
        return None if ok else f"{source!r}: expected hf:<org>/<name>[@revision]"
    if is_hf_source(source):
        return None
    if source.startswith("models:/"):
        rest = source[len("models:/") :]
        name, _, version = rest.partition("/")
        if "@" in rest and not version:
            name, _, alias = rest.partition("@")
            return None if name and alias else f"{source!r}: expected models:/<name>@<alias>"
        if not name or not version:
            return f"{source!r}: expected models:/<name>/<version> or models:/<name>@<alias>"
        return None
    if source.startswith("runs:/"):
        run_id, _, path = source[len("runs:/") :].partition("/")
        return None if run_id and path else f"{source!r}: expected runs:/<run id>/<artifact path>"
    if not Path(source).is_file():
        return f"weights file {source} not found; give a local file, models:/... or runs:/..."
    return None


def resolve_model_file(source: str, tracking_uri: str | None, folder: Path) -> Path:
    """A local plain model file for `source` (downloaded into `folder` when it is a URI)."""
    problem = check_source_syntax(source)
    if problem:
        raise UserInputError(problem)
    if not is_mlflow_uri(source):
        return Path(source)
    from orchestrator.registry import download  # mlflow is slow to import: only when needed

    try:
        local = download(tracking_uri or default_tracking_uri(), source, folder)
    except Exception as err:
        raise UserInputError(
            f"cannot fetch {source} from MLflow: {str(err).splitlines()[0][:300]}"
        ) from None
    if local.is_file():
        return local
    candidates = sorted(local.rglob(MODEL_FILE)) or sorted(local.rglob("*.pt"))
    if not candidates:
        raise UserInputError(f"{source} holds no {MODEL_FILE} (not a detrdistill model)")
    return candidates[0]


def load_model(
    source: str, config: ModelConfig | None = None, tracking_uri: str | None = None
) -> tuple[nn.Module, dict]:
    """Build and load a model from any source. With `config`, the weights must fit it exactly
    (a mismatch names the keys); without, the file's own config is used."""
    if is_hf_source(source):
        payload = _hf_payload(source)
    else:
        with tempfile.TemporaryDirectory(prefix="detrdistill-download-") as folder:
            payload = read_model_file(resolve_model_file(source, tracking_uri, Path(folder)))
    if config is None:
        if payload["config"] is None:
            raise UserInputError(f"{source}: a bare state dict carries no model config; give one")
        try:
            config = model_config_from_dict(payload["config"])
        except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
            first = str(err).splitlines()
            raise UserInputError(
                f"{source}: the model config in this file is not valid: "
                + "; ".join(line.strip() for line in first[:4])
            ) from None
    model = build_model(config)
    load_weights(model, payload["state_dict"], source)
    return model, payload


def init_weights(model: nn.Module, source: str, tracking_uri: str | None = None) -> list[str]:
    """Load `source`'s weights into `model` (a student starting from a pretrained checkpoint).
    Class-head tensors whose shape differs (other classes) keep their fresh initialisation and
    are returned; anything else that does not fit is an error naming the keys."""
    if is_hf_source(source):
        payload = _hf_payload(source)
    else:
        with tempfile.TemporaryDirectory(prefix="detrdistill-download-") as folder:
            payload = read_model_file(resolve_model_file(source, tracking_uri, Path(folder)))
    own = model.state_dict()
    state = {k: v for k, v in payload["state_dict"].items() if "class_head" not in k or k in own}
    fresh = sorted(
        k for k in own if "class_head" in k and (k not in state or state[k].shape != own[k].shape)
    )
    for key in fresh:
        state[key] = own[key]
    load_weights(model, state, source)
    return fresh


def _hf_payload(source: str) -> dict:
    """A model file's payload (config, state dict, class names) of a Hugging Face checkpoint."""
    from detr_models.pretrained.hf_folder import ImportError_, import_hf
    from orchestrator.training.hub_source import hub_folder

    try:
        imported = import_hf(hub_folder(source))
    except ImportError_ as err:
        raise UserInputError(str(err)) from None
    return {
        "format": None,
        "config": imported.config.model_dump(mode="json"),
        "state_dict": imported.model.state_dict(),
        "extra": {"class_names": imported.class_names, "source": source},
    }
