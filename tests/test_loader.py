import torch

from detr_models.batch import Batch
from orchestrator.data.dataset import CocoDetection
from orchestrator.data.loader import build_loader, collate_detection, set_epoch
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
