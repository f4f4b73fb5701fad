"""Synthetic smear generator: images of the 23 classes drawn after docs/CHALLENGE.md section 2
(python -m prepare.synth)."""
