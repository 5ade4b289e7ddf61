"""zscir training side: open_clip backbones, phi, the PyTorch composed-query reference, training loops."""

__version__ = "0.1.0"
