"""Synthetic smear generator: images of the 23 classes drawn from MORPHOLOGY.md (python -m prepare.synth)."""
