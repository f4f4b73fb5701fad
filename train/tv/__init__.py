"""torchvision detectors (Faster R-CNN, RetinaNet): adapter, shared training loop, COCO data."""
