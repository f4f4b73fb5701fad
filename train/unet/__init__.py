"""UNet on box-made masks, the masks themselves (python -m train.unet.masks) and MedSAM refinement."""
