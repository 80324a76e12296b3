"""Imported Hugging Face checkpoints give the outputs of the transformers implementation (built
from its config with random weights; nothing downloaded), and bad imports are refused whole."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from orchestrator.cli.main import main
from orchestrator.training.model_source import load_model
from tests.hf_reference import (
    as_pipeline_pixels,
    edit_config,
    hf_model,
    padded_batch,
    save_folder,
)

pytest.importorskip("transformers")

KINDS = [
    "detr",
    "conditional_detr",
    "dab_detr",
    "deformable",
    "deformable_refine",
    "deformable_two_stage",
    "rtdetr_v2",
]


def _probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    # HF DETR scores with a softmax over K + no-object; the others with a sigmoid
    return logits.softmax(-1)[..., :-1] if kind == "detr" else logits.sigmoid()


@pytest.mark.parametrize("kind", KINDS)
def test_an_imported_model_matches_transformers(tmp_path, kind):
    reference = hf_model(kind)
    folder = save_folder(reference, tmp_path / "hf")
    assert main(["import", str(folder), "--out", str(tmp_path / "model.pt")]) == 0
    model, payload = load_model(str(tmp_path / "model.pt"))
    assert payload["extra"]["class_names"] == ["cat", "dog", "bird", "car", "tree"]
    pixels, mask = padded_batch()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, pixel_mask=mask)
        ours = model.eval()(as_pipeline_pixels(kind, pixels), mask == 0)
    probs = ours.logits[-1].sigmoid()
    assert (probs - _probabilities(kind, expected.logits)).abs().max() <= 1e-4
    assert (ours.boxes[-1] - expected.pred_boxes).abs().max() <= 1e-4
    if kind == "deformable_two_stage":  # the encoder's proposals too: scores and choice
        usable = ours.extras["enc_usable"]
        theirs = expected.enc_outputs_class[..., 0]
        assert (ours.extras["enc_logits"][..., 0] - theirs)[usable].abs().max() <= 1e-4
        chosen = theirs.topk(ours.extras["selected_tokens"].shape[1], dim=1).indices
        assert torch.equal(chosen.sort().values, ours.extras["selected_tokens"].sort().values)
    if kind == "rtdetr_v2":  # the encoder's selected queries: their scores, boxes, every stage
        assert (ours.extras["enc_logits"] - expected.enc_topk_logits).abs().max() <= 1e-4
        assert (ours.extras["enc_boxes"] - expected.enc_topk_bboxes).abs().max() <= 1e-4
        stages = expected.intermediate_logits.transpose(0, 1)  # [L,B,Q,C]
        assert (ours.logits - stages).abs().max() <= 1e-4


def test_weight_names_of_both_transformers_generations_import_the_same(tmp_path):
    # save_pretrained writes the Hub's (older) names; the in-memory model has the v5 names
    reference = hf_model("detr")
    folder = save_folder(reference, tmp_path / "hf")
    weights = folder / "model.safetensors"
    stored = load_file(str(weights))
    current = {k: v.clone() for k, v in reference.state_dict().items()}
    assert "model.backbone.conv_encoder.model.embedder.embedder.convolution.weight" in stored
    assert "model.backbone.model.embedder.embedder.convolution.weight" in current
    save_file(current, str(weights))
    assert main(["import", str(folder), "--out", str(tmp_path / "model.pt")]) == 0
    model, _ = load_model(str(tmp_path / "model.pt"))
    pixels, mask = padded_batch()
    with torch.no_grad():
        expected = reference(pixel_values=pixels, pixel_mask=mask)
        ours = model.eval()(pixels, mask == 0)
    assert (ours.boxes[-1] - expected.pred_boxes).abs().max() <= 1e-4


def _refused(tmp_path, capsys, folder, *needles):
    out = tmp_path / "model.pt"
    capsys.readouterr()  # (transformers' own progress output while saving)
    assert main(["import", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()  # nothing written


def test_an_unsupported_architecture_is_refused(tmp_path, capsys):
    folder = save_folder(hf_model("detr"), tmp_path / "hf")
    edit_config(folder, model_type="yolos")
    _refused(tmp_path, capsys, folder, "config.json", "'yolos'", "supported")


def test_a_truncated_weights_file_is_refused(tmp_path, capsys):
    folder = save_folder(hf_model("detr"), tmp_path / "hf")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    _refused(tmp_path, capsys, folder, "model.safetensors", "truncated")


def test_weights_that_do_not_fit_the_config_are_listed(tmp_path, capsys):
    folder = save_folder(hf_model("conditional_detr"), tmp_path / "hf")
    edit_config(folder, d_model=128, encoder_ffn_dim=256, decoder_ffn_dim=256)
    _refused(tmp_path, capsys, folder, "shape mismatch", "class_head.weight (5, 64) vs (5, 128)")


def test_a_missing_folder_and_a_broken_pth_get_their_own_messages(tmp_path, capsys):
    _refused(tmp_path, capsys, tmp_path / "nothing", "not found", "hf:<org>/<name>")
    pth = tmp_path / "detr-r50.pth"
    pth.write_bytes(b"x")
    _refused(tmp_path, capsys, pth, "detr-r50.pth", "not a readable checkpoint of tensors")


def test_the_hub_teacher_recipe_is_what_the_import_writes():
    # the fields of SenseTime/deformable-detr-with-box-refine's config.json (timm ResNet-50)
    from detr_models.pretrained.hf_config import config_from_hf
    from orchestrator.spec.loader import load_spec

    hub = {
        "model_type": "deformable_detr",
        "use_timm_backbone": True,
        "backbone": "resnet50",
        "backbone_config": None,
        "dilation": False,
        "d_model": 256,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_ffn_dim": 1024,
        "decoder_ffn_dim": 1024,
        "num_queries": 300,
        "num_feature_levels": 4,
        "encoder_n_points": 4,
        "decoder_n_points": 4,
        "with_box_refine": True,
        "two_stage": False,
        "dropout": 0.1,
        "auxiliary_loss": False,
        "position_embedding_type": "sine",
        "id2label": {str(i): f"class {i}" for i in range(91)},
    }
    config, names = config_from_hf(hub)
    recipe = load_spec("experiments/coco_detrdistill_hf_deformable_refine_r50.yaml")
    assert len(names) == 91
    assert recipe.teacher.model.model_dump() == config.model_dump()


def test_the_rtdetr_hub_teacher_recipe_is_what_the_import_writes():
    # the fields of PekingU/rtdetr_v2_r50vd's config.json that decide the model
    from detr_models.pretrained.hf_config import config_from_hf
    from orchestrator.spec.loader import load_spec

    hub = {
        "model_type": "rt_detr_v2",
        "backbone_config": {
            "model_type": "rt_detr_resnet",
            "layer_type": "bottleneck",
            "depths": [3, 4, 6, 3],
            "hidden_sizes": [256, 512, 1024, 2048],
            "embedding_size": 64,
            "out_features": ["stage2", "stage3", "stage4"],
        },
        "d_model": 256,
        "encoder_hidden_dim": 256,
        "encoder_in_channels": [512, 1024, 2048],
        "encoder_layers": 1,
        "encoder_ffn_dim": 1024,
        "decoder_layers": 6,
        "decoder_ffn_dim": 1024,
        "decoder_n_points": 4,
        "num_queries": 300,
        "num_denoising": 100,
        "hidden_expansion": 1.0,
        "id2label": {str(i): f"class {i}" for i in range(80)},
    }
    config, names = config_from_hf(hub)
    recipe = load_spec("experiments/coco_detrdistill_rtdetr_v2_r50_r18.yaml")
    assert len(names) == 80
    assert recipe.teacher.model.model_dump() == config.model_dump()


def test_timm_backbone_names_map_to_the_torchvision_resnet():
    from detr_models.config import tiny_config
    from detr_models.pretrained.hf_keys import convert_hf_state

    config = tiny_config("detr", backbone="resnet50")
    names = {
        "model.backbone.conv_encoder.model.conv1.weight": "backbone.stem.0.weight",
        "model.backbone.conv_encoder.model.bn1.running_var": "backbone.stem.1.running_var",
        "model.backbone.conv_encoder.model.layer3.5.bn2.weight": "backbone.stages.2.5.bn2.weight",
        "model.backbone.conv_encoder.model.layer1.0.downsample.1.bias": (
            "backbone.stages.0.0.downsample.1.bias"
        ),
    }
    converted, unmapped = convert_hf_state({k: torch.zeros(1) for k in names}, config)
    assert unmapped == [] and sorted(converted) == sorted(names.values())


def _spec_with_imported_teacher(tmp_path, tiny_spec, names):
    from tests.hf_reference import NAMES

    NAMES.clear()
    NAMES.update(dict(enumerate(names)))
    try:
        folder = save_folder(hf_model("deformable"), tmp_path / "hf")
    finally:
        NAMES.clear()
        NAMES.update({0: "cat", 1: "dog", 2: "bird", 3: "car", 4: "tree"})
    assert main(["import", str(folder), "--out", str(tmp_path / "teacher.pt")]) == 0
    _, payload = load_model(str(tmp_path / "teacher.pt"))
    teacher = {"model": payload["config"], "weights": str(tmp_path / "teacher.pt")}
    return tiny_spec(tmp_path, register_as=None, teacher=teacher)


def test_an_imported_teacher_with_more_classes_is_kept_to_the_datasets(tmp_path, tiny_spec):
    from orchestrator.data.build import build_datasets
    from orchestrator.launch.run import preflight
    from orchestrator.training.assemble import load_teacher_model

    names = ["N/A", "star", "circle", "square", "triangle", "diamond", "cross", "ellipse"]
    names += ["pentagon", "person"]
    spec = _spec_with_imported_teacher(tmp_path, tiny_spec, names)
    classes = build_datasets(spec.data)[0].class_names
    assert preflight(spec) == len(classes)
    whole, _ = load_model(spec.teacher.weights)
    kept, config = load_teacher_model(spec, classes)
    assert kept.num_classes == config.num_classes == len(classes)
    pixels, mask = padded_batch()
    with torch.no_grad():
        before = whole.eval()(pixels, mask == 0).logits
        after = kept.eval()(pixels, mask == 0).logits
    index = [names.index(name) for name in classes]
    # the same rows of the same classifier (a smaller matmul may round differently)
    assert (after - before[..., index]).abs().max() <= 1e-5


def test_an_imported_teacher_missing_a_class_is_refused_naming_both(tmp_path, tiny_spec):
    from orchestrator.errors import UserInputError
    from orchestrator.launch.run import preflight

    spec = _spec_with_imported_teacher(tmp_path, tiny_spec, ["N/A", "circle", "person"])
    with pytest.raises(UserInputError) as info:
        preflight(spec)
    assert "teacher classes" in str(info.value) and "circle" in str(info.value)


def test_predict_json_gives_the_detections_of_transformers_own_pipeline(tmp_path):
    # HF's image processor (resize, normalise) and post_process_object_detection against
    # `detrdistill predict --json`, on images of odd sizes
    import json

    import numpy as np
    from PIL import Image
    from transformers import DeformableDetrImageProcessor

    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(77, 53), (61, 90)]):
        path = tmp_path / f"image{i}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(path)
        paths.append(path)
    reference = hf_model("deformable_refine")
    save_folder(reference, tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "model.pt")]) == 0
    out = tmp_path / "detections.json"
    command = ["predict", "--model", str(tmp_path / "model.pt"), *map(str, paths)]
    command += ["--out", str(tmp_path / "drawn"), "--size", "64", "--max-size", "96"]
    assert main([*command, "--json", str(out)]) == 0
    ours = json.loads(out.read_text())
    processor = DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    for path, record in zip(paths, ours, strict=True):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = reference(**processor(images=image, return_tensors="pt"))
        (expected,) = processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(image.height, image.width)], top_k=100
        )
        boxes = expected["boxes"].clone()  # ours are clipped to the image
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
        found = record["detections"]
        assert record["file_name"] == path.name and len(found) == len(expected["scores"])
        scores = torch.tensor([d["score"] for d in found])
        xyxy = torch.tensor([d["bbox"] for d in found])
        xyxy[:, 2:] += xyxy[:, :2]
        assert (scores - expected["scores"]).abs().max() <= 1e-3
        assert (xyxy - boxes).abs().max() <= 0.5
        assert [d["category_id"] for d in found] == expected["labels"].tolist()
        assert found[0]["category"] in {"cat", "dog", "bird", "car", "tree"}


def test_a_checkpoint_folder_is_a_teacher_and_a_student_start(tmp_path, tiny_spec):
    from detr_models.build import build_model
    from orchestrator.data.build import build_datasets
    from orchestrator.training.assemble import load_teacher_model
    from orchestrator.training.model_source import init_weights
    from tests.hf_reference import NAMES

    NAMES.update({5: "circle", 6: "square", 7: "triangle"})
    try:
        folder = save_folder(hf_model("deformable_refine"), tmp_path / "hf")
    finally:
        for key in (5, 6, 7):
            NAMES.pop(key)
    imported, payload = load_model(str(folder))  # the folder itself is a weights source
    config = payload["config"]
    spec = tiny_spec(tmp_path, register_as=None, teacher={"model": config, "weights": str(folder)})
    classes = build_datasets(spec.data)[0].class_names
    teacher, _ = load_teacher_model(spec, classes)
    assert teacher.num_classes == len(classes) == 3
    # a student of the same architecture starts from the checkpoint; its class heads (3
    # classes, not 8) start fresh
    student = build_model({**config, "num_classes": 3, "weights": str(folder)})
    fresh = init_weights(student, str(folder))
    assert fresh and all("class_head" in k for k in fresh)
    own, source = student.state_dict(), imported.state_dict()
    same = [k for k in own if k not in fresh]
    assert same and all(torch.equal(own[k], source[k]) for k in same)


def test_imagenet_backbone_weights_are_named_and_checked(tmp_path, tiny_spec_dict):
    from orchestrator.errors import UserInputError
    from orchestrator.spec.loader import load_spec_dict
    from orchestrator.spec.paths import resolve_paths

    good = tiny_spec_dict(
        tmp_path,
        **{"student.backbone": "resnet50", "student.backbone_weights": "torchvision:IMAGENET1K_V2"},
    )
    spec = resolve_paths(load_spec_dict(good, source="test"), tmp_path)
    assert spec.student.backbone_weights == "torchvision:IMAGENET1K_V2"  # not made a path
    bad = tiny_spec_dict(
        tmp_path,
        **{"student.backbone": "resnet50", "student.backbone_weights": "torchvision:IMAGENET"},
    )
    with pytest.raises(UserInputError) as info:
        load_spec_dict(bad, source="test")
    assert "torchvision:IMAGENET1K_V1" in str(info.value) and "backbone_weights" in str(info.value)
