"""contrastseg: contrastive self-supervised pretraining of segmentation encoders for remote sensing."""

__version__ = "0.1.0"

__all__ = ["__version__"]
