import pytest
import torch

from detr_models.batch import Batch
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import build_loader, collate_detection, set_epoch
from orchestrator.data.rtdetr_transforms import BatchMultiScale, rtdetr_train_transforms
from orchestrator.data.transforms import eval_transforms


def _sample(h, w, value, n_boxes=1):
    target = {
        "boxes": torch.rand(n_boxes, 4),
        "labels": torch.zeros(n_boxes, dtype=torch.long),
        "image_id": value,
    }
    return torch.full((3, h, w), float(value)), target


def test_collate_pads_and_masks():
    batch = collate_detection([_sample(10, 20, 1), _sample(16, 12, 2, n_boxes=0)])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 16, 20)
    assert batch.pixel_mask.shape == (2, 16, 20) and batch.pixel_mask.dtype == torch.bool
    # image 0: valid 10x20, padded rows below; image 1: valid 16x12, padded columns right
    assert not batch.pixel_mask[0, :10, :].any() and batch.pixel_mask[0, 10:, :].all()
    assert not batch.pixel_mask[1, :, :12].any() and batch.pixel_mask[1, :, 12:].all()
    assert (batch.images[0, :, :10, :] == 1).all() and (batch.images[0, :, 10:, :] == 0).all()
    assert (batch.images[1, :, :, :12] == 2).all() and (batch.images[1, :, :, 12:] == 0).all()
    assert [t["image_id"] for t in batch.targets] == [1, 2]


def test_collate_size_divisor():
    batch = collate_detection([_sample(10, 20, 1), _sample(17, 12, 2)], size_divisor=8)
    assert batch.images.shape[-2:] == (24, 24)
    assert batch.pixel_mask[1, 17:, :].all() and not batch.pixel_mask[1, :17, :12].any()


def test_batch_to_moves_target_tensors():
    batch = collate_detection([_sample(4, 4, 1)]).to(torch.device("meta"))
    assert batch.images.device.type == "meta" and batch.targets[0]["boxes"].device.type == "meta"
    assert batch.targets[0]["image_id"] == 1


def test_loader_order_and_seeded_shuffle(small_coco):
    dataset = CocoDetection(*small_coco, transforms=eval_transforms(32, 64))
    ids = [t["image_id"] for b in build_loader(dataset, 2, train=False) for t in b.targets]
    assert ids == [10, 11, 12]
    first = [t["image_id"] for b in build_loader(dataset, 1, train=True, seed=3) for t in b.targets]
    again = [t["image_id"] for b in build_loader(dataset, 1, train=True, seed=3) for t in b.targets]
    assert first == again and sorted(first) == [10, 11, 12]
    orders = {
        tuple(
            t["image_id"] for b in build_loader(dataset, 1, train=True, seed=s) for t in b.targets
        )
        for s in range(10)
    }
    assert len(orders) > 1  # the seed really drives the shuffle


def test_loader_with_workers(small_coco):
    dataset = CocoDetection(*small_coco, transforms=eval_transforms(32, 64))
    loader = build_loader(dataset, 3, train=False, num_workers=1)
    set_epoch(loader, 1)  # no-op without a process group
    (batch,) = list(loader)
    assert batch.images.shape[0] == 3 and batch.pixel_mask.any()


def _shard_worker(rank, world, init_file, images_dir, ann_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dataset = CocoDetection(images_dir, ann_file, transforms=eval_transforms(32, 64))
        loader = build_loader(dataset, 1, train=True, seed=5)
        set_epoch(loader, 0)
        first = [t["image_id"] for b in loader for t in b.targets]
        set_epoch(loader, 1)
        second = [t["image_id"] for b in loader for t in b.targets]
        (out_dir / f"{rank}.txt").write_text(f"{first}|{second}")
    finally:
        dist.destroy_process_group()


def test_loader_shards_under_distributed(small_coco, tmp_path):
    import ast

    import torch.multiprocessing as mp

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_shard_worker, args=(2, tmp_path / "init", *small_coco, out_dir), nprocs=2)
    shards = [
        [ast.literal_eval(part) for part in (out_dir / f"{r}.txt").read_text().split("|")]
        for r in range(2)
    ]
    # 3 images over 2 ranks: 2 each (one repeated as padding), together covering every image
    for epoch in range(2):
        ids = shards[0][epoch] + shards[1][epoch]
        assert len(shards[0][epoch]) == len(shards[1][epoch]) == 2
        assert set(ids) == {10, 11, 12}


# ----------------------------------------------------------------------------- batch multi-scale
def test_batch_multi_scale_sizes_masks_and_boxes():
    # image 0: 16x20 with a bright 8x10 block at rows 4..12, cols 5..15; image 1: 10x12, padded
    image = torch.zeros((3, 16, 20))
    image[:, 4:12, 5:15] = 1.0
    box = torch.tensor([[10 / 20, 8 / 16, 10 / 20, 8 / 16]])  # cxcywh, normalised
    first = (image, {"boxes": box, "labels": torch.tensor([0]), "size": torch.tensor([16, 20])})
    second = (torch.zeros((3, 10, 12)), {"boxes": torch.rand(2, 4), "labels": torch.zeros(2)})
    batch = collate_detection([first, second])
    multi = BatchMultiScale([24, 40, 48])
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = multi(batch)
        side = out.images.shape[-1]
        seen.add(side)
        assert out.images.shape == (2, 3, side, side) and side in (24, 40, 48)
        assert out.pixel_mask.shape == (2, side, side)
        for i, (h, w) in enumerate([(16, 20), (10, 12)]):
            new_h, new_w = round(h * side / 16), round(w * side / 20)
            assert out.targets[i]["size"].tolist() == [new_h, new_w]
            assert not out.pixel_mask[i, :new_h, :new_w].any()
            assert out.pixel_mask[i].sum() == side * side - new_h * new_w
            assert torch.equal(out.targets[i]["boxes"], batch.targets[i]["boxes"])
        # the normalised box still frames the bright block
        bright = torch.nonzero(out.images[0, 0] > 0.5)
        (cx, cy, bw, bh) = box[0].tolist()
        scale = torch.tensor([side, side])
        assert torch.allclose(
            bright.min(0).values.float(), torch.tensor([cy - bh / 2, cx - bw / 2]) * scale, atol=1.5
        )
        assert torch.allclose(
            bright.max(0).values.float() + 1,
            torch.tensor([cy + bh / 2, cx + bw / 2]) * scale,
            atol=1.5,
        )
    assert seen == {24, 40, 48}


def test_batch_multi_scale_stops_at_stop_epoch():
    batch = collate_detection([_sample(16, 20, 1), _sample(10, 12, 2)])
    multi = BatchMultiScale([32], stop_epoch=2)
    multi.set_epoch(1)
    assert multi(batch).images.shape[-2:] == (32, 32)
    multi.set_epoch(2)
    assert multi(batch) is batch
    with pytest.raises(ValueError, match="positive scales"):
        BatchMultiScale([])


def _rtdetr_sizes(dataset, seed, epochs):
    """Image sizes per batch and epoch of a 1-worker rtdetr loader (multi-scale stops at 1)."""
    loader = build_loader(
        dataset,
        1,
        train=True,
        num_workers=1,
        seed=seed,
        batch_transform=BatchMultiScale([24, 40, 48, 56], stop_epoch=1),
    )
    sizes = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        sizes.append([tuple(b.images.shape[-2:]) for b in loader])
    return sizes


def test_rtdetr_loader_repeats_per_seed_and_stops_in_workers(small_coco):
    dataset = CocoDetection(*small_coco, transforms=rtdetr_train_transforms(size=32, stop_epoch=1))
    first = _rtdetr_sizes(dataset, seed=4, epochs=2)
    assert dataset.transforms.epoch_scheduled[0].epoch == 1  # set_epoch reached the transform
    assert all(h == w and h in (24, 40, 48, 56) for h, w in first[0])
    # from stop_epoch on, the worker's copies of transform and collate are off: size 32 only
    assert first[1] == [(32, 32)] * 3
    assert first == _rtdetr_sizes(dataset, seed=4, epochs=2)
    assert len({tuple(_rtdetr_sizes(dataset, seed=s, epochs=1)[0]) for s in range(4)}) > 1
