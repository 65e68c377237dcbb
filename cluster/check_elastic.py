"""Check Ray Train elastic scaling on a cluster, without the SRGAN code: a tiny DDP model.

    srgan-dist submit --entrypoint "python cluster/check_elastic.py --storage /shared/elastic" --wait

Runs ``TorchTrainer`` with ``ScalingConfig(num_workers=(MIN, MAX))`` on CPU (gloo), one step per
``--step-seconds``, a checkpoint every step. Every step prints ``ELASTIC step=S world=W rank=R``
from rank 0, so when a node goes away mid-run the log shows the world size drop and the step count
continue from the last checkpoint. Exits 0 once ``--steps`` steps are done.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer


def train_loop(config: dict) -> None:
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder, open(os.path.join(folder, "state.json")) as f:
            step = json.load(f)["step"]
    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()
    if rank == 0:
        print(f"ELASTIC start step={step} world={world}", flush=True)
    while step < config["steps"]:
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        time.sleep(config["step_seconds"])
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                with open(os.path.join(folder, "state.json"), "w") as f:
                    json.dump({"step": step}, f)
            ray.train.report(
                {"step": step, "world": world},
                checkpoint=Checkpoint.from_directory(folder) if rank == 0 else None,
            )
        if rank == 0:
            print(
                f"ELASTIC step={step} world={world} node={ray.get_runtime_context().get_node_id()}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="absolute storage path every node can reach")
    parser.add_argument("--name", default="elastic-check")
    parser.add_argument("--min-workers", type=int, default=1)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument(
        "--resize-interval", type=float, default=5.0, help="elastic_resize_monitor_interval_s"
    )
    args = parser.parse_args()

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"steps": args.steps, "step_seconds": args.step_seconds},
        scaling_config=ScalingConfig(
            num_workers=(args.min_workers, args.max_workers),
            use_gpu=False,
            elastic_resize_monitor_interval_s=args.resize_interval,
        ),
        run_config=RunConfig(
            name=args.name, storage_path=args.storage, failure_config=FailureConfig(max_failures=5)
        ),
    )
    result = trainer.fit()
    print(f"ELASTIC done metrics={result.metrics}", flush=True)


if __name__ == "__main__":
    main()
