"""Train all stages of a config on Ray Train workers.

    python launch.py --config configs/demo.yaml --name demo
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python launch.py --address auto --config configs/div2k_x4.yaml --workers 8 data.train=/data/DF2K_sub

Same as ``srgan-dist train``; see README.md.
"""

import sys

from srgan_dist.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
