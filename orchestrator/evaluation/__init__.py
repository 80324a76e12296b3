"""Measuring models: COCO AP with pycocotools, matching (in)stability, drawing detections."""
