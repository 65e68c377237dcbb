"""Sub-commands of ``srgan-dist`` (argparse only at import time; see ``srgan_dist.cli``)."""
