"""`ray` CLI that keeps ``--node-ip-address 127.0.0.1`` as given, so a node listens on loopback only.

    python cluster/ray_loopback.py start --node-ip-address 127.0.0.1 ...   (any `ray` arguments)

Ray 2.60's servers bind 127.0.0.1 when a node's IP is loopback (gcs_server, raylet and worker
gRPC servers, dashboard agent, runtime-env agent, Ray Client server, metrics servers: each tests
``is_localhost(node_ip)``). But on Linux Ray rewrites a loopback address to the host's routable
one (``ray._private.services.resolve_ip_for_localhost`` -> ``get_node_ip_address``), so every
listener ends up on ``*`` or the host's IP. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's
macOS/Windows single-host mode) stops the rewrite, and cluster/local_cluster.sh sets it for every
process of its cluster (job drivers connect to ``127.0.0.1:<gcs port>`` through it), but it also
makes ``ray start --address`` refuse to add a second node. This wrapper lifts that refusal and
keeps loopback addresses as given, then runs the stock CLI. For one-host clusters only: a real
multi-host cluster needs routable addresses.
"""

from __future__ import annotations

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray._common.network_utils import get_localhost_ip, is_localhost
from ray.scripts.scripts import main

_resolve = services.resolve_ip_for_localhost


def keep_loopback(host: str) -> str:
    """``resolve_ip_for_localhost``, except that 127.0.0.1 / ::1 / localhost stay loopback."""
    return get_localhost_ip() if is_localhost(host) else _resolve(host)


if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = True  # else `ray start --address` refuses a second node
    services.resolve_ip_for_localhost = keep_loopback
    sys.exit(main())
