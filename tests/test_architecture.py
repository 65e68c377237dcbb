"""The package's floors (README "Architecture"): imports only run downward, and Ray, DALI and
``torch.distributed`` stay in the rooms that own them. Checked on the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "srgan_dist"

# Floor of every module (dotted name below srgan_dist, or a package prefix ending in ".").
FLOORS: dict[str, int] = {
    # 0: pure definitions: typed config, run-dir names (and their cloud storage), pixels, metrics,
    # networks, losses
    "config": 0, "errors": 0, "stages": 0, "atomic": 0, "rundir": 0, "storage": 0, "pixels": 0, "metrics": 0, "models": 0, "models.": 0, "losses": 0,
    # 1: components that read and write files, one process
    "data": 1, "data.": 1, "pictures": 1, "vgg_weights": 1, "generator_io": 1, "monitor": 1,
    "infer": 1, "upscale": 1, "evaluate": 1, "export": 1, "console": 1, "run_record": 1,
    "run_lock": 1,
    # 2: training one stage on one worker, without Ray
    "train.steps": 2, "train.ema": 2, "train.validation": 2, "train.checkpoint": 2, "train.window": 2,
    "train.faults": 2, "train.trainer": 2, "train": 2,
    # 3: the distributed seam: Ray Train's worker entry, the Ray session (address, joining, GPU or
    # CPU, workers), the staged driver, the Jobs client, the
    # cluster pre-flight checks
    "train.loop": 3, "ray_session": 3, "driver": 3, "jobs": 3, "embedded_ray": 3, "doctor": 3,
    # 4: entry points
    "cli": 4, "commands": 4, "commands.": 4,
    # the package itself: its version only
    "": 0,
}  # fmt: skip
# Third-party packages only these modules may import (module prefix → allowed importers).
OWNERS = {
    # train.faults: the tests' planned crashes wait for Ray Train to register the last checkpoint.
    "ray": (
        "train.loop",
        "train.faults",
        "ray_session",
        "driver",
        "jobs",
        "embedded_ray",
        "doctor",
        "commands.cluster",
        "commands.doctor",
    ),
    "nvidia.dali": ("data.train_loader", "data.dali_pipeline"),
    "torch.distributed": ("train.trainer", "doctor"),  # doctor: its all-reduce check
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(name: str) -> int:
    if name in FLOORS:
        return FLOORS[name]
    prefixes = [p for p in FLOORS if p.endswith(".") and name.startswith(p)]
    assert prefixes, f"srgan_dist.{name} has no floor in tests/test_architecture.py"
    return FLOORS[max(prefixes, key=len)]


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


MODULES = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_floor_and_imports_only_downward():
    upward = []
    for name, imported in MODULES.items():
        for target in imported:
            if not target.startswith("srgan_dist."):
                continue
            target = target.removeprefix("srgan_dist.")
            if target not in MODULES:  # `from srgan_dist.x import function`
                target = target.rpartition(".")[0]
            if target and target in MODULES and floor(target) > floor(name):
                upward.append(f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})")
    assert not upward, "\n".join(upward)


def test_ray_dali_and_torch_distributed_stay_in_their_rooms():
    strays = []
    for name, imported in MODULES.items():
        for package, owners in OWNERS.items():
            uses = any(target == package or target.startswith(package + ".") for target in imported)
            if uses and name not in owners:
                strays.append(f"srgan_dist.{name} imports {package}")
    assert not strays, "\n".join(strays)


def test_the_checker_sees_a_real_upward_import():
    """Guard against a checker that passes vacuously: the Ray entry point really imports the trainer."""
    assert "srgan_dist.train.trainer" in MODULES["train.loop"] or any(
        target.startswith("srgan_dist.train.trainer") for target in MODULES["train.loop"]
    )
    assert floor("train.loop") > floor("train.trainer") > floor("data.scan") > floor("config")


def test_only_the_ray_session_resolves_addresses_probes_clusters_and_sizes_worker_groups():
    """The Ray address, the join checks and Ray Train's ``ScalingConfig`` have one home,
    ``ray_session.py``, which the driver, the job client and the doctor call."""
    session_only_imports = (
        "ray.train.ScalingConfig",  # the worker group's size and resources
        "ray._raylet.GcsClient",  # the token probe
        "ray._private.services.canonicalize_bootstrap_address",  # the loopback probe
        "ray.autoscaler.sdk.request_resources",  # the GPU wait
    )
    session_only_constants = {"RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"}  # which address, from where
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name == "ray_session":
            continue
        strays += [
            f"srgan_dist.{name} imports {target}"
            for target in session_only_imports
            if target in MODULES[name]
        ]
        constants = {
            node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
        }
        strays += [
            f"srgan_dist.{name} names {value!r}" for value in sorted(session_only_constants & constants)
        ]
    assert not strays, "\n".join(strays)
    assert "ray.train.ScalingConfig" in MODULES["ray_session"]  # the checker sees the real import


def test_every_project_name_the_benchmarks_and_cluster_scripts_import_exists():
    """Benchmarks and cluster scripts import inside functions that only a GPU or a cluster runs;
    a renamed module or function must fail here, not on the first lent GPU."""
    import importlib

    missing = []
    for path in sorted(
        [*(PACKAGE.parent / "bench").glob("*.py"), *(PACKAGE.parent / "cluster").glob("*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srgan_dist"):
                try:
                    module = importlib.import_module(node.module)
                except ImportError:
                    missing.append(f"{path.name}:{node.lineno} {node.module}")
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, missing
