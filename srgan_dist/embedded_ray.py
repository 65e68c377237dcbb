"""The embedded single-machine Ray: every listener on 127.0.0.1, token authentication on.

Used by ``srgan_dist.ray_session.connect_ray`` (training without ``--address``) and by the tests'
``ray_local`` fixture, so both start Ray the same way. What listens where is checked by
tests/test_network.py and written down in README.md ("Security").

Why the loopback switch is needed (Ray 2.60): its servers already bind 127.0.0.1 when the node's
IP is loopback (gcs_server, raylet and core-worker gRPC servers; dashboard, dashboard agent,
runtime-env agent and metrics servers all test ``is_localhost(node_ip)``). But on Linux
``ray.init(_node_ip_address="127.0.0.1")`` rewrites that address to the host's routable IP
(``ray._private.services.resolve_ip_for_localhost`` -> ``get_node_ip_address``), unless
``ray_constants.ENABLE_RAY_CLUSTER`` is false, which is what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
sets and what Ray does on macOS and Windows. That constant is read once at import, so it is set
here for the duration of ``ray.init`` only (it also gates ``ray start --address``, irrelevant to
an in-process Ray).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def init_embedded_ray(num_cpus: int, **init_kwargs: Any) -> Any:
    """``ray.init`` a new local Ray that listens on 127.0.0.1 only; returns its ``RayContext``.

    ``init_kwargs`` go to ``ray.init`` as they are. Also turns Ray Train's preemption watcher off
    for this process's runs (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`` unless set).
    """
    import ray
    import ray._private.ray_constants as ray_constants

    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        # Ray turns token auth on for a local ray.init unless RAY_AUTH_MODE says otherwise.
        log.warning(
            "RAY_AUTH_MODE=disabled: the embedded Ray runs without token authentication; any local "
            "user can submit work to it. Unset RAY_AUTH_MODE to keep it on."
        )
    # No node of a one-machine Ray without an autoscaler is ever preempted, so Ray Train's
    # PreemptionWatcher (one more actor process per run, started beside the workers) has nothing
    # to watch. Ray Train passes this variable from the driver's environment to its controller.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    multi_host = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        context = ray.init(
            # Always a new instance: plain ray.init() joins a Ray it finds on the machine
            # (/tmp/ray/ray_current_cluster), whoever started it and however it listens.
            address="local",
            num_cpus=num_cpus,
            # The dashboard also serves the state API, which Ray Train's PlacementGroupCleaner
            # actor polls every second to see whether the controller is alive. Without it that
            # poll retries the dashboard's address for 40 s (internal_kv_get_with_retry) and
            # the controller's shutdown waits up to 12 s for it; training and restarts do not
            # use it. Leaving the dashboard out saved 0.5-3 s of ray.init in a noisy measurement
            # on 2 loaded cores: not worth a shutdown that can wait 12 s.
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            # Nothing reads Prometheus metrics here; without this the dashboard agent opens one
            # more port (the metrics export port).
            _system_config={"enable_metrics_collection": False},
            **init_kwargs,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_host
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(
            f"the embedded Ray came up on {node_ip}, not {LOOPBACK}: this Ray version resolves the "
            "node address differently (see srgan_dist/embedded_ray.py); refusing to run with ports "
            "open to the network"
        )
    return context
