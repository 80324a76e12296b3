import json
import logging

import pytest
import torch
from torchvision.ops import box_convert

from orchestrator.data.dataset import CocoDetection
from orchestrator.data.transforms import eval_transforms
from orchestrator.errors import DatasetError
from tests.conftest import write_coco


def test_targets_match_json_after_eval_transform(small_coco):
    images_dir, ann_file = small_coco
    dataset = CocoDetection(images_dir, ann_file, transforms=eval_transforms(96, 200))
    image, target = dataset[0]  # image id 10, 64x48 -> shorter side 96 -> 128x96
    assert target["image_id"] == 10
    assert image.shape == (3, 96, 128)
    assert target["size"].tolist() == [96, 128]
    assert target["orig_size"].tolist() == [48, 64]
    # back to pixels of the original image: must equal the json boxes (crowd box excluded)
    pixels = box_convert(target["boxes"], "cxcywh", "xywh") * torch.tensor([64, 48, 64, 48])
    assert torch.allclose(pixels, torch.tensor([[4.0, 6, 20, 10], [30, 20, 30, 25]]), atol=0.5)
    assert target["labels"].tolist() == [0, 2]  # ids 1 and 7 of (1, 3, 7)


def test_category_mapping_round_trip_non_contiguous(small_coco):
    dataset = CocoDetection(*small_coco)
    assert dataset.label_to_category == [1, 3, 7]
    assert dataset.num_classes == 3
    assert dataset.class_names == ["circle", "square", "triangle"]
    for label, category in enumerate(dataset.label_to_category):
        assert dataset.category_to_label[category] == label


def test_crowd_empty_and_degenerate_boxes(small_coco, caplog):
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        dataset = CocoDetection(*small_coco)
    boxes, labels = dataset.raw_target(0)
    assert len(boxes) == 2  # the crowd box is not a training target
    boxes, labels = dataset.raw_target(1)
    assert boxes.tolist() == [[5, 5, 25, 35]] and labels.tolist() == [1]
    assert dataset.num_dropped == 2  # zero width, and entirely outside the image
    warnings = [r for r in caplog.records if "dropped 2 box" in r.getMessage()]
    assert len(warnings) == 1 and "5, 6" in warnings[0].getMessage()
    _, target = dataset[2]  # the empty image is a valid sample
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_grayscale_and_palette_become_rgb(small_coco):
    dataset = CocoDetection(*small_coco)
    for index in range(len(dataset)):
        assert dataset.load_image(index).mode == "RGB"
        image, _ = dataset[index]
        assert image.shape[0] == 3


def test_rgba_image_becomes_rgb(tmp_path):
    images = [{"id": 1, "file_name": "x.png", "width": 20, "height": 20, "mode": "RGBA"}]
    dataset = CocoDetection(*write_coco(tmp_path, images, []))
    assert dataset[0][0].shape == (3, 20, 20)


def test_box_partly_outside_is_clipped(tmp_path):
    images = [{"id": 1, "file_name": "x.png", "width": 20, "height": 20}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, 10, 15, 20], "iscrowd": 0}]
    dataset = CocoDetection(*write_coco(tmp_path, images, anns))
    assert dataset.raw_target(0)[0].tolist() == [[0, 10, 10, 20]]


def test_missing_image_file_is_named(small_coco):
    images_dir, ann_file = small_coco
    (images_dir / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png \(image id 11\)"):
        CocoDetection(images_dir, ann_file)


def test_broken_json_names_file_and_position(small_coco):
    images_dir, ann_file = small_coco
    ann_file.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"annotations\.json: not valid json \(line 1"):
        CocoDetection(images_dir, ann_file)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_id", 99, r"annotation id 1 points to unknown image_id 99"),
        ("category_id", 2, r"annotation id 1 has unknown category_id 2; known ids: \[1, 3, 7\]"),
        ("bbox", [1, 2, 3], r"annotation id 1 has bbox \[1, 2, 3\]"),
        ("bbox", [1, 2, float("nan"), 3], r"annotation id 1 has bbox"),
    ],
)
def test_dangling_annotation_is_named(small_coco, field, value, message):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    data["annotations"][0][field] = value
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        CocoDetection(images_dir, ann_file)


def test_missing_section_and_duplicate_ids(small_coco):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps({k: v for k, v in data.items() if k != "categories"}))
    with pytest.raises(DatasetError, match="missing list 'categories'"):
        CocoDetection(images_dir, ann_file)
    data["images"].append(dict(data["images"][0]))
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image id 10 appears twice"):
        CocoDetection(images_dir, ann_file)


def test_verify_images_catches_size_mismatch_and_corrupt_file(small_coco):
    images_dir, ann_file = small_coco
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 65
    ann_file.write_text(json.dumps(data))
    CocoDetection(images_dir, ann_file)  # existence only: fine
    with pytest.raises(DatasetError, match=r"a\.png: image is 64x48 but .* says 65x48"):
        CocoDetection(images_dir, ann_file, verify_images=True)
    data["images"][0]["width"] = 64
    ann_file.write_text(json.dumps(data))
    (images_dir / "c.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"c\.png: cannot read image \(image id 12\)"):
        CocoDetection(images_dir, ann_file, verify_images=True)


def test_a_truncated_image_is_skipped_counted_and_logged(tmp_path, caplog):
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(1, 4)]
    images_dir, annotations = write_coco(tmp_path, images, [])
    broken = images_dir / "2.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixels do not
    dataset = CocoDetection(images_dir, annotations, verify_images=True)  # headers are fine
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        _, target = dataset[1]
    assert target["image_id"] == 3 and dataset.broken == {1}
    assert any("2.png: cannot read image" in r.getMessage() for r in caplog.records)
    strict = CocoDetection(images_dir, annotations, skip_broken=False)
    with pytest.raises(DatasetError, match=r"2\.png: cannot read image \(image id 2\)"):
        strict[1]


def test_too_many_broken_images_stop_with_one_message(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 20} for i in range(1, 13)]
    images_dir, annotations = write_coco(tmp_path, images, [])
    for i in range(1, 12):
        (images_dir / f"{i}.png").write_bytes(b"not a png at all")
    dataset = CocoDetection(images_dir, annotations)
    with pytest.raises(DatasetError, match="11 images cannot be decoded; stopping"):
        dataset[0]
