"""Service-client settings dataeff relies on, set as environment defaults before Prefect/MLflow are imported.

One home for them: the CLI's project commands and the test session call :func:`configure_runtime`;
``docker/compose.yml`` names the same lease storage for its ``prefect server start``.
"""

from __future__ import annotations

import os

RUNTIME_DEFAULTS: dict[str, str] = {
    # No telemetry from a tool that runs inside annotation teams' networks.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral API starts in ~15-40 s on a loaded 2-core machine; Prefect's default (20 s) is too short.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Concurrency leases on disk, not in the server's memory: a killed loop's lease outlives the
    # ephemeral API it was made on, so the next run can see it expire and give its slot back
    # (flows.locks). In memory, a SIGKILL left the project's slot taken forever.
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    # MLflow's own HTTP retries (default 7, exponential) stall a call for minutes with nothing but
    # urllib3 warnings; the loop retries MLflow logging itself and says why (flows.loop, LOG_RETRY).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def configure_runtime() -> None:
    """Set :data:`RUNTIME_DEFAULTS` where the environment does not set them already."""
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
