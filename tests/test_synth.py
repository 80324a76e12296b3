"""Tests for the synthetic shapes COCO dataset generator."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from orchestrator.data import synth
from orchestrator.data.clutter import add_distractors, add_texture, visible_boxes
from orchestrator.data.synth import (
    CATEGORY_IDS,
    SHAPES,
    ensure_shapes,
    generate_shapes,
    split_paths,
)

SMALL = {"num_train": 6, "num_val": 3, "image_size": 64}


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def load_coco(ann_file: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "shapes"
    return generate_shapes(root, num_train=40, num_val=8, seed=3, num_classes=5, max_objects=4)


def test_constants() -> None:
    assert SHAPES[:3] == ("circle", "square", "triangle")
    assert len(SHAPES) == len(CATEGORY_IDS) == len(set(CATEGORY_IDS)) <= 8
    assert list(CATEGORY_IDS) != list(range(1, len(CATEGORY_IDS) + 1))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_shapes(tmp_path / "a", seed=5, **SMALL)
    b = generate_shapes(tmp_path / "b", seed=5, **SMALL)
    c = generate_shapes(tmp_path / "c", seed=6, **SMALL)
    files_a = all_files(a)
    assert len(files_a) == SMALL["num_train"] + SMALL["num_val"] + 2
    assert files_a == all_files(b)
    ann = "annotations/train.json"
    assert files_a[ann] != all_files(c)[ann]
    assert files_a["train/000000.png"] != all_files(c)["train/000000.png"]


def test_layout_and_return_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = generate_shapes("rel", **SMALL)
    assert out == tmp_path / "rel" and out.is_absolute()
    assert sorted(p.name for p in (out / "train").iterdir())[0] == "000000.png"
    assert (out / "annotations" / "val.json").is_file()
    assert split_paths("rel", "val") == (out / "val", out / "annotations" / "val.json")
    with pytest.raises(ValueError, match="split"):
        split_paths(out, "test")


@pytest.mark.parametrize("split,count", [("train", 40), ("val", 8)])
def test_annotations_are_valid_coco(dataset: Path, split: str, count: int) -> None:
    images_dir, ann_file = split_paths(dataset, split)
    coco = load_coco(ann_file)
    assert len(coco.getImgIds()) == count
    assert sorted(coco.getCatIds()) == list(CATEGORY_IDS[:5])
    assert [c["name"] for c in coco.loadCats(list(CATEGORY_IDS[:5]))] == list(SHAPES[:5])
    raw = json.loads(ann_file.read_text())
    assert raw["info"]["params"]["seed"] == 3
    ann_ids = [a["id"] for a in raw["annotations"]]
    assert sorted(ann_ids) == list(range(1, len(ann_ids) + 1))
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(images_dir / image["file_name"]) as pil:
            assert pil.size == (image["width"], image["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert 1 <= len(anns) <= 4
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert ann["category_id"] in CATEGORY_IDS[:5]
            assert ann["iscrowd"] == 0
            # The area is the shape's own, never more than its box.
            assert 0 < ann["area"] <= w * h + 1e-6


def _isolated(ann: dict, others: list[dict], margin: int) -> bool:
    x, y, w, h = ann["bbox"]
    for other in others:
        ox, oy, ow, oh = other["bbox"]
        if (
            x - margin < ox + ow
            and ox < x + w + margin
            and y - margin < oy + oh
            and oy < y + h + margin
        ):
            return False
    return True


def test_boxes_tightly_enclose_the_drawn_shape(dataset: Path) -> None:
    images_dir, ann_file = split_paths(dataset, "train")
    coco = load_coco(ann_file)
    margin, checked = 3, 0
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(images_dir / image["file_name"]).convert("RGB"), dtype=float)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        for ann in anns:
            others = [a for a in anns if a["id"] != ann["id"]]
            if not _isolated(ann, others, margin):
                continue
            x, y, w, h = (int(v) for v in ann["bbox"])
            left, top = max(x - margin, 0), max(y - margin, 0)
            window = pixels[top : y + h + margin, left : x + w + margin]
            # Fill colours are >= 100 away from their surroundings; noise is a few levels.
            match = np.linalg.norm(window - np.array(ann["color"]), axis=2) < 45
            rows, cols = np.flatnonzero(match.any(axis=1)), np.flatnonzero(match.any(axis=0))
            assert rows.size, ann
            drawn = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            expected = (x - left, y - top, x - left + w, y - top + h)
            assert np.abs(np.subtract(drawn, expected)).max() <= 1, (ann, drawn, expected)
            # The recorded area is the shape's true area, well below the box for most shapes.
            assert abs(match.sum() - ann["area"]) <= 0.15 * ann["area"] + 12, ann
            checked += 1
    assert checked >= 15


def test_sizes_cover_coco_small_medium_large(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "sizes", num_train=100, num_val=0, seed=11)
    areas = np.array(
        [a["area"] for a in json.loads(split_paths(root, "train")[1].read_text())["annotations"]]
    )
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    medium = 1 - small - large
    assert min(small, medium, large) > 0.05, (small, medium, large)


def test_ensure_shapes_reuses_and_separates(tmp_path: Path) -> None:
    first = ensure_shapes(tmp_path, seed=1, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    again = ensure_shapes(tmp_path, **SMALL, seed=1)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == stamps
    other = ensure_shapes(tmp_path, seed=2, **SMALL)
    assert other != first and other.parent == first.parent
    assert ensure_shapes(tmp_path, seed=1, max_objects=4, **SMALL) == first  # defaults filled in
    assert leftovers(tmp_path) == []
    with pytest.raises(TypeError, match="colour"):
        ensure_shapes(tmp_path, colour="red")


def test_ensure_shapes_race_loser_uses_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = synth._write_split
    state = {"raced": False}

    def write_then_lose_race(root: Path, split: str, count: int, params: dict) -> tuple[int, int]:
        result = real_write(root, split, count, params)
        if split == "val" and not state["raced"]:
            state["raced"] = True  # another process finishes first, while we are still writing
            winner = root.parent / root.name.split(".tmp-")[0].lstrip(".")
            generate_shapes(winner, seed=1, **SMALL)
            (winner / "winner").write_text("")
        return result

    monkeypatch.setattr(synth, "_write_split", write_then_lose_race)
    folder = ensure_shapes(tmp_path, seed=1, **SMALL)
    assert state["raced"] and (folder / "winner").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name,value",
    [
        ("num_classes", 0),
        ("num_classes", len(SHAPES) + 1),
        ("image_size", 31),
        ("num_train", -1),
        ("num_val", -2),
        ("max_objects", 0),
        ("seed", -1),
    ],
)
def test_bad_params_raise_value_error(tmp_path: Path, name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        generate_shapes(tmp_path / "bad", **{name: value})
    with pytest.raises(ValueError, match=name):
        ensure_shapes(tmp_path, **{name: value})
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"force=True") as info:
        generate_shapes(out, **SMALL)
    assert str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert generate_shapes(out, force=True, **SMALL) == out
    assert not (out / "keep.txt").exists()
    assert (out / "annotations" / "train.json").is_file()
    assert leftovers(tmp_path) == []


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (generate_shapes(tmp_path / "empty", **SMALL) / "val").is_dir()


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    real_save = Image.Image.save
    calls = {"n": 0}

    def flaky_save(self: Image.Image, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        generate_shapes(out, force=True, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_harder_options_leave_the_default_dataset_and_its_cache_folder_as_they_were(
    tmp_path: Path,
) -> None:
    # the quickstart's data: the same folder name (and bytes) as before the options existed
    root = ensure_shapes(
        tmp_path, num_train=256, num_val=32, image_size=128, seed=0, num_classes=3, max_objects=4
    )
    assert root.name == "shapes-4b187a36d764"
    info = json.loads(split_paths(root, "val")[1].read_text())["info"]["params"]
    assert not set(info) & {"distractors", "occlusion", "textured", "small_objects"}


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hard") / "shapes"
    return generate_shapes(
        root,
        num_train=30,
        num_val=4,
        image_size=160,
        seed=5,
        num_classes=8,
        max_objects=8,
        distractors=6,
        occlusion=1.0,
        textured=True,
        small_objects=True,
    )


def test_occluded_objects_are_annotated_with_their_visible_boxes(hard: Path) -> None:
    images_dir, ann_file = split_paths(hard, "train")
    coco = load_coco(ann_file)
    assert len(coco.getCatIds()) == 8
    covered = checked = 0
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(images_dir / image["file_name"]).convert("RGB"), dtype=float)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        for ann in anns:
            x, y, w, h = (int(v) for v in ann["bbox"])
            box = pixels[y : y + h, x : x + w]
            match = np.linalg.norm(box - np.array(ann["color"]), axis=2) < 45
            # what shows of the object lies inside its box, and the box is tight: its colour
            # touches all four edges (another object's similar colour can only add pixels)
            assert match.sum() >= 0.85 * ann["area"] - 4, ann
            edges = (match[0].any(), match[-1].any(), match[:, 0].any(), match[:, -1].any())
            assert all(edges), ann
            checked += 1
            for other in anns:
                ox, oy, ow, oh = other["bbox"]
                iw, ih = min(x + w, ox + ow) - max(x, ox), min(y + h, oy + oh) - max(y, oy)
                covered += other is not ann and iw > 0 and ih > 0 and iw * ih > 0.3 * w * h
    assert checked >= 60
    assert covered >= 5  # objects lie over one another (the default keeps them apart)


def test_visible_boxes_follow_what_shows() -> None:
    owner = np.zeros((20, 20), np.int32)
    owner[2:12, 2:12] = 1  # a square...
    owner[2:12, 6:12] = 2  # ...whose right part another object covers
    owner[15, 15] = 3  # an object almost hidden
    first, second, hidden = visible_boxes(owner, 3)
    assert first == ([2.0, 2.0, 4.0, 10.0], 40)
    assert second == ([6.0, 2.0, 6.0, 10.0], 60)
    assert hidden is None


def test_small_objects(hard: Path) -> None:
    anns = json.loads(split_paths(hard, "train")[1].read_text())["annotations"]
    sides = np.sqrt([a["area"] for a in anns]) / 160
    assert (sides < 0.07).mean() > 0.15  # the small-object bucket


def test_textures_and_distractors_draw_over_a_flat_background() -> None:
    for seed in range(6):  # every texture kind turns up in six seeds
        canvas = np.full((96, 96, 3), 120, np.uint8)
        add_texture(np.random.default_rng(seed), canvas)
        levels = canvas.reshape(-1, 3).astype(int)
        # a pattern of a second colour at 25-50% opacity: parts of the image differ clearly
        assert np.abs(levels - [120, 120, 120]).sum(axis=1).max() > 20, seed
        assert (np.abs(levels - [120, 120, 120]).sum(axis=1) < 3).mean() < 0.9, seed
    canvas = np.full((96, 96, 3), 120, np.uint8)
    add_distractors(np.random.default_rng(0), canvas, 6)
    changed = (canvas != 120).any(axis=2).mean()
    assert 0.01 < changed < 0.8


@pytest.mark.parametrize(("name", "value"), [("occlusion", 1.5), ("distractors", -1)])
def test_bad_harder_options_raise_value_error(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        generate_shapes(tmp_path / "bad", **{name: value})


def test_a_spec_asks_for_the_harder_data(tmp_path: Path) -> None:
    from orchestrator.data.build import data_paths
    from orchestrator.spec.sections import DataSpec

    source = {"kind": "synthetic", "train_images": 3, "val_images": 2, "image_size": 64}
    hard_source = dict(source, distractors=3, occlusion=0.5, textured=True, small_objects=True)
    plain = data_paths(DataSpec(source={**source, "cache_dir": str(tmp_path)}))
    harder = data_paths(DataSpec(source={**hard_source, "cache_dir": str(tmp_path)}))
    assert plain["val"][0].parent != harder["val"][0].parent  # their own cache folders
    params = json.loads(harder["val"][1].read_text())["info"]["params"]
    assert params["distractors"] == 3 and params["occlusion"] == 0.5
    assert params["textured"] is True and params["small_objects"] is True
