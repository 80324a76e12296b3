"""Measuring models and data: COCO AP with pycocotools, matching (in)stability, drawing
detections, and `data check` (the ground truth through the eval pipeline)."""
