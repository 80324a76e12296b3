import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from orchestrator.synth import CATEGORY_IDS, SHAPES, ensure_shapes, generate_shapes, split_paths


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = generate_shapes(tmp_path / "a", num_train=6, num_val=2, image_size=64, seed=3)
    b = generate_shapes(tmp_path / "b", num_train=6, num_val=2, image_size=64, seed=3)
    c = generate_shapes(tmp_path / "c", num_train=6, num_val=2, image_size=64, seed=4)
    assert _files(a) == _files(b) and len(_files(a)) == 6 + 2 + 2
    assert (
        _files(a)[split_paths(a, "train")[1].relative_to(a)]
        != _files(c)[split_paths(c, "train")[1].relative_to(c)]
    )


def test_valid_coco_with_non_contiguous_ids(tmp_path):
    root = generate_shapes(
        tmp_path / "s", num_train=40, num_val=5, image_size=96, seed=0, num_classes=4, max_objects=3
    )
    for split, count in (("train", 40), ("val", 5)):
        images_dir, ann_file = split_paths(root, split)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
        assert len(coco.imgs) == count
        assert sorted(coco.cats) == list(CATEGORY_IDS[:4]) == [1, 3, 7, 8]
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(SHAPES[:4])
        for image_id, info in coco.imgs.items():
            anns = coco.imgToAnns[image_id]
            assert 1 <= len(anns) <= 3
            with Image.open(images_dir / info["file_name"]) as img:
                assert img.size == (info["width"], info["height"]) == (96, 96)
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
                assert 0 < ann["area"] <= w * h + 1e-6 and ann["iscrowd"] == 0


def test_sizes_span_small_medium_large(tmp_path):
    root = generate_shapes(tmp_path / "s", num_train=100, num_val=1, image_size=128, seed=0)
    areas = [
        a["area"] for a in json.loads(split_paths(root, "train")[1].read_text())["annotations"]
    ]
    assert min(areas) < 32**2 and any(32**2 <= a < 96**2 for a in areas) and max(areas) >= 96**2


def test_boxes_enclose_the_drawn_shape(tmp_path):
    # a shape is drawn in a colour far from the background: the pixels that changed between the
    # box's inside and a ring just outside it must sit inside the box
    root = generate_shapes(
        tmp_path / "s", num_train=30, num_val=1, image_size=128, seed=1, max_objects=1
    )
    images_dir, ann_file = split_paths(root, "train")
    data = json.loads(ann_file.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    checked = 0
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if w < 12 or h < 12:
            continue
        pixels = np.asarray(
            Image.open(images_dir / files[ann["image_id"]]).convert("RGB"), dtype=np.float32
        )
        x0, y0, x1, y1 = round(x), round(y), round(x + w), round(y + h)
        inside = pixels[y0:y1, x0:x1]
        colour = np.median(inside.reshape(-1, 3), axis=0) if ann["category_id"] == 3 else None
        if colour is None:
            continue  # squares fill their box (when unrotated); others leave background corners
        near = np.linalg.norm(pixels - colour, axis=-1) < 40  # [H,W] pixels of the shape's colour
        ys, xs = np.nonzero(near)
        assert (
            xs.min() >= x0 - 2 and xs.max() <= x1 + 1 and ys.min() >= y0 - 2 and ys.max() <= y1 + 1
        )
        checked += 1
    assert checked >= 3


def test_ensure_shapes_caches_by_params(tmp_path):
    a = ensure_shapes(tmp_path, num_train=3, num_val=1, image_size=64)
    stamp = split_paths(a, "train")[1].stat().st_mtime_ns
    again = ensure_shapes(tmp_path, num_train=3, num_val=1, image_size=64)
    assert again == a and split_paths(a, "train")[1].stat().st_mtime_ns == stamp
    other = ensure_shapes(tmp_path, num_train=3, num_val=1, image_size=64, seed=1)
    assert other != a


def test_bad_params_and_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_shapes(tmp_path / "x", num_classes=99)
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(tmp_path / "x", image_size=8)
    out = tmp_path / "busy"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force"):
        generate_shapes(out, num_train=2, num_val=1)
    assert (out / "keep.txt").read_text() == "mine"
    generate_shapes(out, num_train=2, num_val=1, force=True)
    assert not (out / "keep.txt").exists() and split_paths(out, "val")[1].is_file()


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        generate_shapes(tmp_path / "out", num_train=8, num_val=2)
    assert list(tmp_path.iterdir()) == []
