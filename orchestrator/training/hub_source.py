"""Pretrained Hugging Face checkpoints as local folders: `hf:<org>/<name>[@revision]` is
downloaded from the Hub (cached by huggingface_hub; config.json and safetensors only), a
local model folder is used as it is."""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.errors import UserInputError

logger = logging.getLogger("detrdistill")


def hub_folder(source: str) -> Path:
    """A local HF model folder for `source` (downloaded from the Hub for `hf:...`)."""
    if source.startswith("hf:"):
        return _download(source[3:])
    path = Path(source)
    if path.is_dir():
        return path
    raise UserInputError(
        f"{source}: not found; give a local Hugging Face model folder (config.json + "
        "*.safetensors) or hf:<org>/<name>[@revision]"
    )


def _download(repo: str) -> Path:
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserInputError(f"hf:{repo}: expected hf:<org>/<name>[@revision]")
    from huggingface_hub import snapshot_download

    logger.info(f"downloading {repo_id} from the Hugging Face Hub (cached)")
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=["config.json", "preprocessor_config.json", "*.safetensors"],
            )
        )
    except Exception as err:
        raise UserInputError(
            f"hf:{repo}: cannot download ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "without internet, copy the model folder here and import the folder"
        ) from None
