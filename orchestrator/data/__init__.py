"""Datasets: COCO-format reading, augmentation, batching, the synthetic shapes generator and
building the train/val sets of a spec."""
