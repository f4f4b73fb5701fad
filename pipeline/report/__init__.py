"""``make report``: one self-contained HTML page per prepared dataset (``pipeline.report.build_report``).

    python -m pipeline.report --data DATA --k K --seed SEED [--config ENSEMBLE.yaml] [--submission SUB.csv]

Data and cleaning, fold balance, training curves per member and fold, the out-of-fold table (each member
without and with TTA, with the classifier, the ensemble; every difference with a paired bootstrap
interval over images), the best setting's per-class F1 and confusion matrix, the most confused class
pairs with example crops, the worst out-of-fold images with true and predicted boxes, and the last
submission's validation. Images are embedded: the file opens from disk, anywhere.
"""
from pipeline.report.build import build_report

__all__ = ["build_report"]
