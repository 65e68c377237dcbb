"""HR image sources, validation, and the DALI / PIL pipelines that make (LR, HR) batches.

- ``scan_images``: find, check and convert HR files before training (``scan.py``);
- ``build_train_loader``: endless sharded (LR, HR) batches, DALI or PIL (``train_loader.py``);
- ``build_val_set``: whole-image validation pairs (``validation.py``), read, downscaled and
  scored as ``evaluate`` does (``scoring.py``);
- ``prepare_subimages`` / ``write_sample_data``: the ``prepare`` and ``sample-data`` commands;
- ``load_rgb``: an image as the loaders see it (the project's decoder, ``srgan_dist.pictures``).

DALI is imported only when a DALI loader is built.
"""

from srgan_dist.data.scan import CONVERSION_RULES, DataError, ScanResult, scan_images
from srgan_dist.data.train_loader import TrainLoader, build_train_loader
from srgan_dist.data.validation import ValImage, build_val_set
from srgan_dist.pictures import load_rgb

__all__ = [
    "CONVERSION_RULES",
    "DataError",
    "ScanResult",
    "TrainLoader",
    "ValImage",
    "build_train_loader",
    "build_val_set",
    "load_rgb",
    "scan_images",
]
