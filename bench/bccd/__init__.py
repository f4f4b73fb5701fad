"""Side experiments on the real BCCD smears (../shared/data/bccd): detectors and the crop classifier."""
