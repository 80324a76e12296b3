from orchestrator.cli.main import main
from orchestrator.spec.loader import load_spec

SPEC = """name: vars
data:
  source:
    kind: coco
    train_images: ${ROOT_FOR_TEST:-coco}/train2017
    train_annotations: ${ROOT_FOR_TEST:-coco}/a.json
    val_images: ${ROOT_FOR_TEST:-coco}/val2017
    val_annotations: ${UNSET_FOR_TEST}/b.json
student: {architecture: detr}
"""


def test_dataset_paths_come_from_one_variable(tmp_path, monkeypatch, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "spec.yaml:8: data.source.val_annotations: environment variable UNSET_FOR_TEST is not set"
        in err
    )
    monkeypatch.setenv("UNSET_FOR_TEST", "/data")
    spec = load_spec(path)
    assert spec.data.source.train_images == "coco/train2017"
    assert spec.data.source.val_annotations == "/data/b.json"
    monkeypatch.setenv("ROOT_FOR_TEST", "/mnt/coco")
    assert load_spec(path).data.source.val_images == "/mnt/coco/val2017"
