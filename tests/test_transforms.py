import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2

from orchestrator.data.build import eval_transform, train_batch_transform, train_transform
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.rtdetr_transforms import UntilEpoch, rtdetr_train_transforms
from orchestrator.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomSizeCrop,
    eval_transforms,
    train_transforms,
)
from orchestrator.spec.sections import RTDETR_SCALES, DataSpec
from tests.conftest import write_coco


def _image_with_filled_box(box, size=(80, 120)):
    """Black image with a white filled rectangle at pixel xyxy `box`."""
    image = torch.zeros((3, *size), dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 255
    return image


def _white_extent(image):
    """Pixel xyxy extent of clearly white pixels of a normalised image, or None."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    raw = image * std + mean  # [3,H,W] in [0,1]
    white = (raw > 0.6).all(dim=0)
    if not white.any():
        return None
    ys, xs = torch.nonzero(white, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_box_on_filled_rectangle(seed):
    torch.manual_seed(seed)
    box = (30, 20, 70, 60)
    transform = train_transforms(
        scales=(64, 80, 96), max_size=160, crop_resize=(70, 90), crop_size=(40, 70)
    )
    image = tv_tensors.Image(_image_with_filled_box(box))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(80, 120)
        ),
        "labels": torch.tensor([2]),
    }
    out_image, out_target = transform(image, target)
    extent = _white_extent(out_image.as_subclass(torch.Tensor))
    boxes = out_target["boxes"].as_subclass(torch.Tensor)
    if extent is None:  # the crop missed the rectangle: its box must be gone as well
        assert len(boxes) == 0
        return
    assert len(boxes) == 1 and out_target["labels"].tolist() == [2]
    # the visible rectangle and its box agree to within interpolation blur (2 px)
    assert torch.allclose(extent, boxes[0], atol=2.0), (extent, boxes[0])


def test_flip_moves_box_with_image():
    transform = train_transforms(scales=(80,), max_size=200, crop_resize=None, flip_prob=1.0)
    box = (10, 20, 40, 50)
    image = tv_tensors.Image(_image_with_filled_box(box))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(80, 120)
        ),
        "labels": torch.tensor([0]),
    }
    out_image, out_target = transform(image, target)
    assert out_image.shape[-2:] == (80, 120)
    assert out_target["boxes"].tolist() == [[80.0, 20.0, 110.0, 50.0]]


def test_eval_transform_is_deterministic_resize():
    transform = eval_transforms(size=40, max_size=70)
    image = tv_tensors.Image(torch.zeros((3, 80, 160), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[16.0, 8, 32, 24]]), format="XYXY", canvas_size=(80, 160)
    )
    first, target = transform(image, {"boxes": boxes, "labels": torch.tensor([1])})
    second, _ = transform(image, {"boxes": boxes, "labels": torch.tensor([1])})
    assert first.shape == (3, 35, 70)  # max_size caps the longer side
    assert torch.equal(first, second)
    assert torch.allclose(target["boxes"], torch.tensor([[7.0, 3.5, 14.0, 10.5]]), atol=0.01)


def test_random_size_crop_bounds():
    crop = RandomSizeCrop(10, 30)
    for seed in range(20):
        torch.manual_seed(seed)
        out = crop(tv_tensors.Image(torch.zeros((3, 25, 50), dtype=torch.uint8)))
        h, w = out.shape[-2:]
        assert 10 <= h <= 25 and 10 <= w <= 30
    with pytest.raises(ValueError, match="min_size <= max_size"):
        RandomSizeCrop(30, 10)


def test_dataset_train_targets_stay_normalised(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(1, 4)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 30, 20], "iscrowd": 0}
        for i in range(1, 4)
    ]
    dataset = CocoDetection(
        *write_coco(tmp_path, images, anns),
        transforms=train_transforms(
            scales=(32, 48), max_size=80, crop_resize=(36,), crop_size=(20, 30)
        ),
    )
    torch.manual_seed(0)
    for _ in range(5):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert target["size"].tolist() == list(image.shape[-2:])
            assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
            xyxy = box_convert(target["boxes"], "cxcywh", "xyxy")
            assert (xyxy[:, 2:] > xyxy[:, :2]).all()


# ----------------------------------------------------------------------------- RT-DETR recipe
def _bright_extent(image):
    """Pixel xyxy extent of the bright pixels of a normalised image (threshold halfway between
    its darkest and brightest grey, so photometric distortion does not move it), or None."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    grey = (image * std + mean).mean(dim=0)  # [H,W] in [0,1]
    low, high = grey.min(), grey.max()
    if high - low < 0.2:
        return None
    ys, xs = torch.nonzero(grey > (low + high) / 2, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _one_box_sample(box, size=(80, 120)):
    image = tv_tensors.Image(_image_with_filled_box(box, size))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=size
        ),
        "labels": torch.tensor([2]),
    }
    return image, target


@pytest.mark.parametrize("seed", range(12))
def test_rtdetr_transform_keeps_box_on_filled_rectangle(seed):
    # reference probabilities; the IoU crop always keeps the centre of the only box
    torch.manual_seed(seed)
    out_image, out_target = rtdetr_train_transforms(size=96)(*_one_box_sample((30, 20, 70, 60)))
    assert out_image.shape == (3, 96, 96)
    boxes = out_target["boxes"].as_subclass(torch.Tensor)
    assert len(boxes) == 1 and out_target["labels"].tolist() == [2]
    extent = _bright_extent(out_image.as_subclass(torch.Tensor))
    assert extent is not None and torch.allclose(extent, boxes[0], atol=2.0), (extent, boxes[0])


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_rtdetr_resize_is_square_without_keeping_aspect(flip_p):
    transform = rtdetr_train_transforms(
        size=60, photometric_p=0.0, zoom_out_p=0.0, iou_crop_p=0.0, flip_p=flip_p
    )
    out_image, out_target = transform(*_one_box_sample((30, 20, 70, 60)))  # from 80x120
    assert out_image.shape == (3, 60, 60)
    # x scales by 60/120, y by 60/80; a flip mirrors x in the 60-wide output
    expected = [[60 - 35.0, 15.0, 60 - 15.0, 45.0]] if flip_p else [[15.0, 15.0, 35.0, 45.0]]
    assert torch.allclose(out_target["boxes"].as_subclass(torch.Tensor), torch.tensor(expected))


def test_rtdetr_stop_epoch_switches_the_random_ops_off():
    sample = _one_box_sample((30, 20, 70, 60))
    plain = rtdetr_train_transforms(
        size=64, photometric_p=0.0, zoom_out_p=0.0, iou_crop_p=0.0, flip_p=0.0
    )
    expected_image, expected_target = plain(*sample)
    strong = rtdetr_train_transforms(
        size=64, photometric_p=1.0, zoom_out_p=1.0, iou_crop_p=1.0, flip_p=0.0, stop_epoch=3
    )
    torch.manual_seed(0)
    strong.set_epoch(2)  # before stop_epoch: zoom-out always moves the box
    _, early = strong(*sample)
    assert not torch.allclose(early["boxes"], expected_target["boxes"], atol=1.0)
    for epoch in (3, 7):
        strong.set_epoch(epoch)
        image, target = strong(*sample)
        assert torch.equal(image, expected_image)
        assert torch.equal(target["boxes"], expected_target["boxes"])


def test_until_epoch_rejects_stop_epoch_zero():
    with pytest.raises(ValueError, match="stop_epoch >= 1"):
        UntilEpoch(v2.RandomHorizontalFlip(), stop_epoch=0)


def test_rtdetr_dataset_targets_stay_normalised(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(1, 4)]
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 30, 20], "iscrowd": 0}
        for i in range(1, 4)
    ]
    dataset = CocoDetection(
        *write_coco(tmp_path, images, anns), transforms=rtdetr_train_transforms(size=48)
    )
    torch.manual_seed(0)
    for _ in range(4):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.shape == (3, 48, 48) and target["size"].tolist() == [48, 48]
            assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
            xyxy = box_convert(target["boxes"], "cxcywh", "xyxy")
            assert (xyxy[:, 2:] > xyxy[:, :2]).all()


def test_spec_picks_the_transforms_of_its_augment():
    image = tv_tensors.Image(torch.zeros((3, 80, 160), dtype=torch.uint8))
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(80, 160)),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    detr = DataSpec(eval_size=40, max_size=100)
    rtdetr = DataSpec(augment="rtdetr", eval_size=40, rtdetr={"size": 48, "stop_epoch": 5})
    assert eval_transform(detr)(image, empty)[0].shape == (3, 40, 80)
    assert eval_transform(rtdetr)(image, empty)[0].shape == (3, 48, 48)
    assert train_batch_transform(detr) is None
    multi = train_batch_transform(rtdetr)
    assert multi.scales == RTDETR_SCALES and multi.stop_epoch == 5
    assert train_batch_transform(DataSpec(augment="rtdetr", rtdetr={"scales": []})) is None
    torch.manual_seed(0)
    assert train_transform(rtdetr)(image, empty)[0].shape == (3, 48, 48)
