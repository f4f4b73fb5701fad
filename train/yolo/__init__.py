"""Ultralytics YOLO models (YOLOv5u, YOLOv8, YOLO11): adapter, trainer hooks, predictor."""
