"""Pre-flight checks of a Ray cluster before a long run (``srgan-dist doctor``).

    srgan-dist doctor --address auto --config configs/div2k_x4.yaml --storage /shared/runs

Every per-node check is a Ray actor or task pinned to that node
(``NodeAffinitySchedulingStrategy(node_id, soft=False)``); the all-reduce is a real Ray Train run.
Each check waits at most ``timeout_s`` (``ray.get(timeout=...)``), so a dead or hung node gives a
FAIL line instead of a hang. Lines are ``STATUS CHECK NODE REASON [fix: ...]`` with STATUS one of
PASS, WARN, FAIL; ``Doctor.run`` prints them as they come and returns them all.

This module's functions are shipped to the nodes by value (``register_pickle_by_value``), so the
checks run, and can say so, on a node where srgan-dist itself is missing or another version.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from srgan_dist.config import Config
from srgan_dist.errors import UserError
from srgan_dist.ray_session import fewest_workers, scaling_config, use_gpu, workers_text
from srgan_dist.stages import needs_vgg
from srgan_dist.storage import StorageError, check_writable, is_uri, join, read_range

Status = Literal["PASS", "WARN", "FAIL"]
Outcome = tuple[Status, str, str]  # status, reason, fix: what a node-side check returns

MISSING = "missing"
VERSIONED = (("srgan-dist", "srgan_dist"), ("torch", "torch"), ("ray", "ray"), ("dali", "nvidia.dali"))
DOCTOR_DIR = ".doctor"
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's VGG19_Weights.IMAGENET1K_V1 file name


@dataclass(frozen=True)
class CheckLine:
    status: Status
    check: str
    node: str
    reason: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.status} {self.check} {self.node} {self.reason}" + (
            f" fix: {self.fix}" if self.fix else ""
        )


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    cpus: float
    gpus: float
    is_head: bool

    @property
    def label(self) -> str:
        """``ip/id-prefix``: unique even when several nodes share an IP (one machine, containers)."""
        return f"{self.ip}/{self.node_id[:8]}"


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes from ``ray.nodes()``, head first."""
    import ray

    nodes = [
        Node(
            node_id=entry["NodeID"],
            ip=entry["NodeManagerAddress"],
            cpus=entry["Resources"].get("CPU", 0.0),
            gpus=entry["Resources"].get("GPU", 0.0),
            is_head="node:__internal_head__" in entry["Resources"],
        )
        for entry in ray.nodes()
        if entry["Alive"]
    ]
    return sorted(nodes, key=lambda node: (not node.is_head, node.ip, node.node_id))


# ---------------------------------------------------------------------------------------------
# What runs on each node.


def package_versions() -> dict[str, str]:
    """Python and the versions of srgan-dist, torch, Ray and DALI this process can import."""
    versions = {"python": platform.python_version()}
    for name, module in VERSIONED:
        try:
            versions[name] = importlib.import_module(module).__version__
        except ImportError:
            versions[name] = MISSING
    return versions


class NodeProbe:
    """One actor per node (one process: torch is imported once for all its checks)."""

    def versions(self) -> dict[str, str]:
        return package_versions()

    def write_probe(self, path: str, token: str) -> Outcome:
        """Write ``token`` to ``path`` (fsync'd), read it back."""
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as file:
                file.write(token)
                file.flush()
                os.fsync(file.fileno())
            with open(path) as file:
                back = file.read()
        except OSError as error:
            return "FAIL", f"cannot write {path}: {error}", ""
        if back != token:
            return "FAIL", f"{path} reads back different bytes than were written", ""
        return "PASS", f"wrote, fsync'd and read back {path}", ""

    def read_probe(self, path: str) -> str | None:
        """The text of ``path``, or None if this node cannot see it."""
        try:
            with open(path) as file:
                return file.read()
        except FileNotFoundError:
            return None

    def remove_tree(self, directory: str) -> None:
        """Delete ``directory`` and then its parent if that is left empty (``<storage>/.doctor``)."""
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        parent = os.path.dirname(directory)
        if os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)

    def read_data(self, role: str, source: str) -> Outcome:
        """List ``source`` (a folder, list file or folder URI) and read the first bytes of its
        first file, as this node's training loader would."""
        from srgan_dist.data.scan import DataError, list_source

        try:
            files = list_source(source, role=role)
            if not files:
                return "FAIL", f"{role}: {source} holds no files", ""
            if is_uri(files[0]):
                read_range(files[0], 0, 16)
            else:
                with open(files[0], "rb") as file:
                    file.read(16)
        except (DataError, OSError) as error:
            return "FAIL", _one_line(error), ""
        return "PASS", f"{role}: listed {len(files)} file(s) in {source}, read {files[0]}", ""

    def load_vgg(self, weights: str, random_fallback: bool) -> Outcome:
        import torch

        from srgan_dist.vgg_weights import VGGWeightsUnavailable, load_vgg19_features

        try:
            load_vgg19_features(weights, allow_random_fallback=False)
        except VGGWeightsUnavailable as error:
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", VGG19_FILE)
            status: Status = "WARN" if random_fallback else "FAIL"
            consequence = (
                " (loss.vgg_random_fallback=true: training would use a RANDOM VGG)" * random_fallback
            )
            return (
                status,
                f"{error.__cause__ or error}{consequence}",
                (
                    f"put {VGG19_FILE} at {cache} on this node, or pass loss.vgg_weights=PATH to a vgg19 state dict"
                ),
            )
        except (FileNotFoundError, UserError) as error:
            return (
                "FAIL",
                str(error),
                (
                    "copy a torchvision vgg19 state dict to that path on every node (or onto shared storage), "
                    "e.g. torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), PATH)"
                ),
            )
        return "PASS", f"VGG19 weights load (loss.vgg_weights={weights})", ""


def gpu_probe() -> Outcome:
    """CUDA usable (a matmul checked against the CPU) and a DALI ``mixed`` decode + resize of a
    small JPEG made here. Runs as a task holding one GPU."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    if not torch.cuda.is_available():
        return (
            "FAIL",
            (
                f"torch.cuda.is_available() is False (torch {torch.__version__} built for CUDA "
                f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            ),
            "install an NVIDIA driver that supports this torch build's CUDA version, or a torch build for the node's driver",
        )
    generator = torch.Generator().manual_seed(0)
    matrix = torch.rand(256, 256, generator=generator)
    product = (matrix.cuda() @ matrix.cuda()).cpu()
    if not torch.allclose(product, matrix @ matrix, rtol=1e-2, atol=1e-2):
        return "FAIL", f"a 256x256 matmul on {torch.cuda.get_device_name()} gives wrong numbers", ""
    cuda = f"CUDA ok on {torch.cuda.get_device_name()} (torch CUDA {torch.version.cuda})"
    try:
        from srgan_dist.data.dali_pipeline import decode_and_resize
    except ImportError as error:
        return "FAIL", f"{cuda}; DALI: {error}", "pip install the nvidia-dali wheel for this node's CUDA"
    photo = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(photo).save(encoded, format="JPEG")
    resized = decode_and_resize(encoded.getvalue(), decode_device="mixed", size=32, device_id=0)
    if resized.shape != (32, 32, 3):
        return "FAIL", f"{cuda}; DALI mixed decode + resize gave shape {resized.shape}, not (32, 32, 3)", ""
    return "PASS", f"{cuda}; DALI mixed decode + resize of a JPEG ok", ""


def discriminator_gradient_numel(cfg: Config) -> int:
    """How many fp32 gradient values DDP all-reduces for D each SRGAN step (its parameters; ~23.5M,
    94 MB, for the paper's D). Counted on the meta device: nothing is allocated."""
    import torch

    from srgan_dist.models import Discriminator

    with torch.device("meta"):
        discriminator = Discriminator(channels=cfg.model.disc_channels, norm=cfg.model.disc_norm)
    return sum(parameter.numel() for parameter in discriminator.parameters())


def timed_all_reduce(numel: int, device: Any, rank: int, repeats: int = 3) -> dict[str, float]:
    """All-reduce a buffer of ``numel`` fp32 values (a warm-up, then the best of ``repeats``) in
    the initialised process group; its sum, seconds and bandwidths in GB/s.

    ``algbw_gb_s`` is bytes / time; ``busbw_gb_s`` is nccl-tests' bus bandwidth, algbw x 2(n-1)/n:
    what a ring all-reduce moves through each rank's link, comparable across world sizes (0 for
    one rank, which moves nothing)."""
    import torch
    import torch.distributed as dist

    world_size = dist.get_world_size()
    buffer = torch.empty(numel, device=device)
    dist.all_reduce(buffer)  # warm-up: sets up the communicator and its buffers
    seconds = float("inf")
    for _ in range(repeats):
        buffer.fill_(rank + 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        dist.all_reduce(buffer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = min(seconds, time.perf_counter() - started)
    algbw = numel * 4 / seconds / 1e9
    return {
        "sum": float(buffer[-1].item()),
        "seconds": seconds,
        "bytes": numel * 4,
        "algbw_gb_s": algbw,
        "busbw_gb_s": algbw * 2 * (world_size - 1) / world_size,
    }


def all_reduce_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: time all-reduces of a buffer of D's gradient size (``config["numel"]``)."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    timing = timed_all_reduce(int(config["numel"]), device, rank)
    nodes: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id()[:8])
    metrics = {
        "sum": timing["sum"],
        "all_reduce_ms": timing["seconds"] * 1e3,
        "megabytes": timing["bytes"] / 1e6,
        "busbw_gb_s": timing["busbw_gb_s"],
        "backend": dist.get_backend(),
        "nodes": nodes,
    }
    # Ray Train keeps only metrics that come with a checkpoint; rank 0's also shows that a
    # checkpoint reaches the storage.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(folder, "all_reduce.json"), "w") as file:
                json.dump(metrics, file)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# The driver side.


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class Doctor:
    """Run every check against the connected cluster; ``run()`` returns the lines."""

    def __init__(self, cfg: Config, storage: str, timeout_s: float = 90.0, out: TextIO = sys.stdout):
        self.cfg = cfg
        self.storage = storage
        self.timeout_s = timeout_s
        self.out = out
        self.lines: list[CheckLine] = []
        self.probe_dir = f"{storage.rstrip('/')}/{DOCTOR_DIR}/{uuid.uuid4().hex[:12]}"

    def say(self, status: Status, check: str, node: str, reason: str, fix: str = "") -> None:
        line = CheckLine(status, check, node, reason, fix)
        self.lines.append(line)
        print(line, file=self.out, flush=True)

    def gather(self, refs: dict[Node, Any]) -> dict[Node, tuple[Any, str | None]]:
        """``ray.get`` each ref with one shared deadline: ``{node: (value, None) | (None, error)}``."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        deadline = time.monotonic() + self.timeout_s
        results = {}
        for node, ref in refs.items():
            try:
                results[node] = (ray.get(ref, timeout=max(0.0, deadline - time.monotonic())), None)
            except GetTimeoutError:
                results[node] = (
                    None,
                    f"no answer within {self.timeout_s:.0f} s (node down, busy or overloaded)",
                )
            except RayError as error:
                results[node] = (None, _one_line(error))
        return results

    def run(self) -> list[CheckLine]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        nodes = alive_nodes()
        for node in nodes:
            role = "head node" if node.is_head else "node"
            self.say("PASS", "nodes", node.label, f"{role}: {node.cpus:g} CPU, {node.gpus:g} GPU")
        fits = self.check_workers(nodes)

        def pinned(node: Node) -> NodeAffinitySchedulingStrategy:
            return NodeAffinitySchedulingStrategy(node.node_id, soft=False)

        probe_class = ray.remote(NodeProbe)
        probes = {
            node: probe_class.options(num_cpus=0, scheduling_strategy=pinned(node)).remote() for node in nodes
        }
        try:
            self.check_versions(probes)
            self.check_gpus(nodes, pinned)
            self.check_storage(probes)
            self.check_data(probes)
            self.check_vgg(probes)
            self.check_all_reduce(fits)
        finally:
            self.clean_up(probes)
            for probe in probes.values():
                ray.kill(probe)
        return self.lines

    def check_workers(self, nodes: list[Node]) -> bool:
        """Do the workers fit the nodes (whole workers per node)? An elastic run needs room for
        its ``scaling.min_workers`` only."""
        import ray

        scaling = self.cfg.scaling
        self.use_gpu = use_gpu(scaling, sum(node.gpus for node in nodes))
        per_worker = f"{scaling.cpus_per_worker:g} CPU" + (" + 1 GPU" if self.use_gpu else "")
        slots = sum(
            min(int(node.cpus // scaling.cpus_per_worker), int(node.gpus) if self.use_gpu else sys.maxsize)
            for node in nodes
        )
        needed = fewest_workers(scaling)
        counts = f"scaling.num_workers={scaling.num_workers}"
        if scaling.min_workers:
            counts = f"scaling.min_workers={scaling.min_workers}..{counts} (elastic)"
        want = f"{counts} x ({per_worker}, accelerator={scaling.accelerator})"
        if slots < needed and scaling.accelerator == "gpu":
            # Autoscaling clusters start their GPU node types at 0: the all-reduce's request for
            # GPU workers is what makes the autoscaler add them (it then has --timeout seconds).
            self.say(
                "WARN", "workers", "cluster", f"{want} does not fit the nodes up now (room for {slots})",
                "fine on an autoscaling cluster (training waits up to scaling.resource_timeout_s for GPU nodes); "
                "else use fewer --workers or add GPU nodes. GPU checks cover only the nodes up now",
            )  # fmt: skip
            return True
        if slots < needed:
            self.say(
                "FAIL", "workers", "cluster", f"{want} does not fit: the nodes have room for {slots}",
                "use fewer --workers, lower scaling.cpus_per_worker, or add nodes",
            )  # fmt: skip
            return False
        free_cpus = ray.available_resources().get("CPU", 0.0)
        if free_cpus < needed * scaling.cpus_per_worker:
            self.say(
                "WARN", "workers", "cluster", f"{want} fits ({slots} slots) but only {free_cpus:g} CPU are free now",
                "another job holds the rest; the run (and the all-reduce below) waits for it",
            )  # fmt: skip
            return True
        self.say("PASS", "workers", "cluster", f"{want} fits ({slots} slots)")
        return True

    def check_versions(self, probes: dict[Node, Any]) -> None:
        reference = package_versions()
        results = self.gather({node: probe.versions.remote() for node, probe in probes.items()})
        answered = [versions for versions, error in results.values() if error is None]
        for name in reference:  # a package the driver lacks: compare the nodes with the first one
            if reference[name] == MISSING and answered:
                reference[name] = answered[0][name]
        for node, (versions, error) in results.items():
            if error is not None:
                self.say("FAIL", "versions", node.label, error)
                continue
            text = ", ".join(f"{name} {version}" for name, version in versions.items())
            missing = [name for name, version in versions.items() if version == MISSING]
            differ = [name for name in versions if versions[name] != reference[name] and name not in missing]
            if missing:
                fix = "; ".join(self.install_hint(name, reference[name]) for name in missing)
                self.say(
                    "FAIL", "versions", node.label, f"{' and '.join(missing)} not importable ({text})", fix
                )
            elif differ:
                driver = ", ".join(f"{name} {reference[name]}" for name in differ)
                self.say(
                    "FAIL", "versions", node.label, f"{text}; the driver has {driver}",
                    "install the same versions on every node (one container image, or pinned pip installs)",
                )  # fmt: skip
            else:
                self.say("PASS", "versions", node.label, f"{text} (same as the driver)")

    @staticmethod
    def install_hint(name: str, version: str) -> str:
        pinned = f"=={version}" if version != MISSING else ""
        if name == "dali":
            return f"pip install nvidia-dali-cuda130{pinned} (the DALI wheel for the node's CUDA)"
        if name == "srgan-dist":
            return "install the project in the node's image (pip install .), or run doctor and training as jobs that upload it (--address http://HEAD:8265)"
        return f"pip install {name}{pinned}"

    def check_gpus(self, nodes: list[Node], pinned) -> None:
        import ray

        gpu_nodes = [node for node in nodes if node.gpus >= 1]
        for node in nodes:
            if node.gpus < 1:
                self.say(
                    "PASS",
                    "gpu",
                    node.label,
                    "skipped: CPU-only node (CUDA and DALI mixed decode not checked)",
                )
        task = ray.remote(gpu_probe)
        refs = {
            node: task.options(num_cpus=0, num_gpus=1, scheduling_strategy=pinned(node)).remote()
            for node in gpu_nodes
        }
        for node, (outcome, error) in self.gather(refs).items():
            if error is not None:
                self.say(
                    "FAIL",
                    "gpu",
                    node.label,
                    error,
                    "a GPU held by another job times out here; check `ray status`",
                )
            else:
                self.say(outcome[0], "gpu", node.label, outcome[1], outcome[2])

    def check_storage(self, probes: dict[Node, Any]) -> None:
        """Each node writes its own probe file; then each node reads every other node's."""
        if is_uri(self.storage):
            try:
                check_writable(self.storage)
            except (UserError, StorageError) as error:
                self.say("FAIL", "storage", "this machine", str(error))
            else:
                self.say(
                    "PASS",
                    "storage",
                    "this machine",
                    f"{self.storage}: bucket found, test file written and deleted",
                )
            return
        fix = f"create {self.storage} on every node, writable by the user Ray runs as, or pass another --storage"
        paths = {node: f"{self.probe_dir}/{node.node_id[:16]}.probe" for node in probes}
        written = self.gather(
            {node: probe.write_probe.remote(paths[node], node.node_id) for node, probe in probes.items()}
        )
        writers = []
        for node, (outcome, error) in written.items():
            if error is not None:
                self.say("FAIL", "storage-write", node.label, error)
            else:
                self.say(
                    outcome[0], "storage-write", node.label, outcome[1], fix if outcome[0] == "FAIL" else ""
                )
                writers += [node] if outcome[0] == "PASS" else []
        if len(probes) < 2:
            self.say("PASS", "storage-shared", "cluster", "one node: nothing to share")
            return
        reads = {
            (reader, writer): probe.read_probe.remote(paths[writer])
            for reader, probe in probes.items()
            for writer in writers
            if writer != reader
        }
        seen = self.gather(reads)
        for reader in probes:
            problems = []
            for writer in writers:
                if writer == reader:
                    continue
                text, error = seen[(reader, writer)]
                if error is not None:
                    problems.append(error)
                elif text != writer.node_id:
                    what = "does not see" if text is None else "sees other bytes in"
                    problems.append(f"{what} {paths[writer]} written by {writer.label}")
            if problems:
                self.say(
                    "FAIL", "storage-shared", reader.label, f"{problems[0]}: {self.storage} is not shared between nodes",
                    f"mount the same shared filesystem (e.g. NFS) at {self.storage} on every node",
                )  # fmt: skip
            else:
                others = len([writer for writer in writers if writer != reader])
                self.say(
                    "PASS", "storage-shared", reader.label, f"sees the probe files of {others} other node(s)"
                )

    def check_data(self, probes: dict[Node, Any]) -> None:
        """Every node lists and reads ``data.train`` and ``data.val`` (a shared folder, or a bucket
        through the node's own credentials)."""
        data = self.cfg.data
        for role, source in (("data.train", data.train), ("data.val", data.val)):
            if not source:
                continue
            fix = (
                "give every node credentials for the bucket (instance role, service account or "
                "AWS_* / GOOGLE_APPLICATION_CREDENTIALS on the node)"
                if is_uri(source)
                else f"mount {source} at the same path on every node (or put the data in a bucket)"
            )
            results = self.gather(
                {node: probe.read_data.remote(role, source) for node, probe in probes.items()}
            )
            for node, (outcome, error) in results.items():
                if error is not None:
                    self.say("FAIL", "data", node.label, error, fix)
                else:
                    self.say(outcome[0], "data", node.label, outcome[1], fix if outcome[0] == "FAIL" else "")

    def check_vgg(self, probes: dict[Node, Any]) -> None:
        loss = self.cfg.loss
        if not needs_vgg(self.cfg.train.stages):
            self.say(
                "PASS",
                "vgg",
                "cluster",
                f"not needed: no stage of train.stages={list(self.cfg.train.stages)} uses the perceptual loss",
            )
            return
        if loss.vgg_weights == "random":
            self.say(
                "WARN",
                "vgg",
                "cluster",
                "loss.vgg_weights=random: the perceptual loss is not the paper's VGG54",
            )
            return
        results = self.gather(
            {
                node: probe.load_vgg.remote(loss.vgg_weights, loss.vgg_random_fallback)
                for node, probe in probes.items()
            }
        )
        for node, (outcome, error) in results.items():
            if error is not None:
                self.say("FAIL", "vgg", node.label, error)
            else:
                self.say(outcome[0], "vgg", node.label, outcome[1], outcome[2])

    def check_all_reduce(self, fits: bool) -> None:
        """A Ray Train run of ``scaling.num_workers`` workers timing all-reduces of D's gradient size."""
        from ray.train import RunConfig
        from ray.train.torch import TorchTrainer

        scaling = self.cfg.scaling
        if not fits:
            self.say(
                "FAIL", "all-reduce", "cluster", "not run: the workers do not fit (see the workers line)"
            )
            return
        storage_path = join(self.storage, DOCTOR_DIR) if is_uri(self.storage) else self.probe_dir
        trainer = TorchTrainer(
            all_reduce_loop,
            train_loop_config={"numel": discriminator_gradient_numel(self.cfg)},
            scaling_config=scaling_config(scaling, self.use_gpu),
            run_config=RunConfig(name="all-reduce", storage_path=storage_path),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except Exception as error:  # reported as the check's FAIL line below
                outcome["error"] = error

        started = time.monotonic()
        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        wall = time.monotonic() - started
        if thread.is_alive():
            self.say(
                "FAIL", "all-reduce", "cluster", f"{workers_text(scaling)} workers did not finish within {self.timeout_s:.0f} s",
                "check `ray status` for resources held by other jobs, and the Ray Train logs",
            )  # fmt: skip
            return
        if "error" in outcome:
            self.say("FAIL", "all-reduce", "cluster", f"Ray Train run failed: {_one_line(outcome['error'])}")
            return
        metrics = outcome["result"].metrics
        world_size = len(metrics["nodes"])  # an elastic run starts with as many as fit
        expected = world_size * (world_size + 1) / 2
        summary = (
            f"{world_size} workers ({metrics['backend']}, nodes {','.join(metrics['nodes'])}): "
            f"all-reduce of D's gradients ({metrics['megabytes']:.1f} MB) {metrics['all_reduce_ms']:.1f} ms, "
            f"bus bandwidth {metrics['busbw_gb_s']:.2f} GB/s; Ray Train run {wall:.1f} s wall"
        )
        if metrics["sum"] != expected:
            self.say(
                "FAIL", "all-reduce", "cluster", f"{summary}; sum {metrics['sum']:g}, expected {expected:g}"
            )
        else:
            self.say("PASS", "all-reduce", "cluster", summary)

    def clean_up(self, probes: dict[Node, Any]) -> None:
        """Remove the probe directory on each node in turn (unshared storage has one per node)."""
        if is_uri(self.storage):
            return
        for node, probe in probes.items():
            _, error = self.gather({node: probe.remove_tree.remote(self.probe_dir)})[node]
            if error is not None:
                self.say("WARN", "cleanup", node.label, f"could not remove {self.probe_dir}: {error}")
