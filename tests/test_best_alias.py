"""The registry's `@best` alias follows the version with the highest val AP."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from orchestrator.registry import BEST_ALIAS, promote_if_best


def test_best_alias_follows_the_highest_val_ap(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_registered_model("student")
    moved = []
    for ap in ("0.30", "0.50", "0.40", None):
        version = client.create_model_version("student", source=str(tmp_path)).version
        if ap is not None:
            client.set_model_version_tag("student", version, "val_AP", ap)
        moved.append(promote_if_best(uri, "student", version))
    assert moved == [True, True, False, False]  # an untagged version is never promoted
    assert str(client.get_model_version_by_alias("student", BEST_ALIAS).version) == "2"
