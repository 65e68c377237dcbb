"""What the Ray we start listens on, and who it lets in.

For the embedded Ray (``srgan_dist.embedded_ray``, what ``launch.py`` starts without
``--address``) and for the two-node cluster of ``cluster/local_cluster.sh``: list the listening
TCP sockets of every process that was started, fail on any that is not on loopback unless
``ALLOWED_NON_LOOPBACK`` names it, and check that a client without the token is refused by the
GCS (``ray.init``) and by the job server (HTTP).

Sockets are read from /proc (``/proc/net/tcp{,6}`` and ``/proc/<pid>/fd``), so no psutil or ss.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SCRIPT

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# Non-loopback listeners that are accepted, by process name, each with the reason. Empty: with
# the settings in srgan_dist/embedded_ray.py and cluster/local_cluster.sh, Ray 2.60 binds every
# listener of a single-host node to 127.0.0.1. README.md ("Security") and cluster/README.md
# describe the same; keep the three in step.
ALLOWED_NON_LOOPBACK: dict[str, str] = {}

# Each refused attempt must end by itself well within this (seconds), not hang.
REFUSAL_TIMEOUT = 120


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    address: str
    port: int

    @property
    def is_loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants (Ray's daemons, workers and agents all descend from it)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _decode_address(hex_address: str) -> str:
    """/proc/net/tcp{,6} address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def listeners_of(pids: set[int]) -> list[Listener]:
    """Listening TCP sockets (IPv4 and IPv6) held by ``pids``."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owner[int(target[8:-1])] = pid
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A" or inode not in owner:  # 0A = LISTEN
                continue
            hex_address, hex_port = local.split(":")
            pid = owner[inode]
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            found.append(Listener(pid, name, _decode_address(hex_address), int(hex_port, 16)))
    return sorted(found, key=lambda listener: (listener.process, listener.port))


def assert_loopback_only(listeners: list[Listener]) -> None:
    assert listeners, "no listening sockets found: the process tree walk is broken"
    exposed = [
        listener
        for listener in listeners
        if not listener.is_loopback and listener.process not in ALLOWED_NON_LOOPBACK
    ]
    table = "\n".join(f"  {x.process} (pid {x.pid}) {x.address}:{x.port}" for x in listeners)
    assert not exposed, f"listening beyond loopback: {exposed}\nall listeners:\n{table}"


def host_address() -> str | None:
    """This machine's routable address (a UDP connect sends nothing), or None without a route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address picks the interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def assert_unreachable_from_host_address(listeners: list[Listener]) -> None:
    """A TCP connect to each port through the host's own routable address must fail."""
    address = host_address()
    if address is None:
        return
    for listener in listeners:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            assert client.connect_ex((address, listener.port)) != 0, (
                f"{listener.process} port {listener.port} answers on {address}"
            )


def client_without_token(tmp_path: Path) -> dict[str, str]:
    """Environment of a client that has no token: auth off, no token file, no token variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    home = tmp_path / "home-without-token"
    home.mkdir(exist_ok=True)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps 127.0.0.1 as given: the client reaches the GCS.
    return {**env, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def assert_gcs_refuses(gcs_address: str, env: dict[str, str]) -> None:
    """``ray.init(address=...)`` without the token fails with an authentication error. (Ray
    tries again once a second, 20 times by default, whatever the error: one try says as much.)"""
    attempt = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address={gcs_address!r}); print('CONNECTED')"],
        env={**env, "RAY_NUM_REDIS_GET_RETRIES": "1"},
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT,
    )
    output = attempt.stdout + attempt.stderr
    assert attempt.returncode != 0 and "CONNECTED" not in output, output[-3000:]
    assert any(word in output.lower() for word in ("unauthenticated", "authentication", "token")), output[
        -3000:
    ]


def assert_job_server_refuses(dashboard_url: str) -> None:
    """The job API answers 401 to a request without ``Authorization: Bearer <token>``."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{dashboard_url}/api/jobs/", timeout=REFUSAL_TIMEOUT)
    assert refused.value.code in (401, 403)


EMBEDDED_DRIVER = """
import json, sys
import ray
from srgan_dist.embedded_ray import init_embedded_ray

context = init_embedded_ray(num_cpus=2)

@ray.remote
class Probe:  # an actor, as Ray Train's controller and workers are
    def pid(self):
        return __import__("os").getpid()

probe = Probe.remote()
ray.get(probe.pid.remote())
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])
addresses = {"gcs": context.address_info["gcs_address"], "dashboard": context.dashboard_url}
print("READY " + json.dumps(addresses), flush=True)
sys.stdin.readline()  # hold Ray up until the test is done
ray.shutdown()
"""


def test_embedded_ray_listens_on_loopback_only_and_refuses_clients_without_the_token(tmp_path):
    # In a child process: the tests' shared embedded Ray may already run in this one.
    driver = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED_DRIVER],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = driver.stdout.readline()
        assert line.startswith("READY "), f"embedded Ray did not start: {line!r}"
        addresses = json.loads(line.removeprefix("READY "))
        listeners = listeners_of(process_tree(driver.pid))
        assert_loopback_only(listeners)
        assert any(x.process == "gcs_server" for x in listeners)
        assert any(x.port == int(addresses["dashboard"].rsplit(":", 1)[1]) for x in listeners)
        assert_unreachable_from_host_address(listeners)
        assert_gcs_refuses(addresses["gcs"], client_without_token(tmp_path))
        assert_job_server_refuses(f"http://{addresses['dashboard']}")
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            driver.kill()


def test_local_cluster_listens_on_loopback_only_and_refuses_clients_without_the_token(
    two_node_cluster, tmp_path
):
    """The session's cluster: started with the script's default settings (token auth is the
    default, checked here) on the tests' ports."""
    cluster = two_node_cluster
    default_env = {k: v for k, v in cluster.env.items() if k != "SRGAN_CLUSTER_AUTH"}
    printed = subprocess.run(
        [str(SCRIPT), "env"], env=default_env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "RAY_AUTH_MODE=token" in printed.stdout  # token auth is the default
    pids: set[int] = set()
    for node in ("head", "worker"):
        pids |= process_tree(int(Path(cluster.tmp, f"{node}.pid").read_text()))
    listeners = listeners_of(pids)
    assert_loopback_only(listeners)
    gcs, dashboard = cluster.gcs_port, cluster.dashboard_port
    assert {gcs, gcs + 1, dashboard} <= {x.port for x in listeners}  # GCS, Ray Client, job server
    assert sum(x.process == "raylet" for x in listeners) >= 2  # both nodes were looked at
    assert_unreachable_from_host_address(listeners)
    assert_gcs_refuses(cluster.gcs_address, client_without_token(tmp_path))
    assert_job_server_refuses(cluster.address)
