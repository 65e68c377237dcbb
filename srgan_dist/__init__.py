"""srgan-dist: distributed SRGAN training on Ray Train with NVIDIA DALI data loading."""

__version__ = "0.1.0"
