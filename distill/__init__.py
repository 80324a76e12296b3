"""Distillation methods (DETRDistill, OD-DETR and both together) as training objectives
(objective.py); their configs (config.py) and the methods table (methods.py)."""
