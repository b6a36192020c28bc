"""embedsvc: compare vision backbones by the image neighbours they retrieve."""

__version__ = "0.1.0"
