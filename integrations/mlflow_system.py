"""System metrics sampled while work runs, for runs that are written after the work (fine-tunes).

MLflow's own ``log_system_metrics`` samples into a run that is RUNNING while the work happens.
dataeff writes a fine-tune's run only once the fine-tune has finished (its key is the result's
inputs, and a half-written run must never look done), so :class:`SystemSampler` uses MLflow's
monitors (``CPUMonitor`` always, ``GPUMonitor`` when NVML finds a GPU) in a background thread and
keeps the samples; :meth:`integrations.mlflow_runs.RunStore.log_timed_metrics` then writes them on
the run with their real timestamps, under MLflow's names (``system/cpu_utilization_percentage``,
``system/gpu_0_memory_usage_megabytes``, ...), so the run's "System metrics" tab draws them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

log = logging.getLogger(__name__)

SYSTEM_PREFIX = "system/"
PROCESS_RSS = "process_memory_rss_megabytes"
"""The sampling process's resident memory (a fine-tune runs in it), beside MLflow's system-wide figures."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sampled value: ``name`` (with the ``system/`` prefix), value, epoch ms, step (sample index)."""

    name: str
    value: float
    timestamp: int
    step: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        return cls(str(data["name"]), float(data["value"]), int(data["timestamp"]), int(data["step"]))


def _gpu_monitor() -> BaseMetricsMonitor | None:
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        return GPUMonitor()
    except Exception:  # noqa: BLE001 - no NVML / no GPU: CPU figures only
        return None


class SystemSampler:
    """Context manager sampling system metrics every ``interval`` seconds while its block runs.

    One sample is taken on entry and one on exit, so even a short block has two points.

    Args:
        interval: seconds between samples (default 5).

    Attributes:
        samples: the :class:`Sample` list, in time order (filled by the block's end).

    Example:
        >>> with SystemSampler(interval=0.05) as sampler:
        ...     time.sleep(0.12)
        >>> len({s.step for s in sampler.samples}) >= 2
        True
    """

    def __init__(self, interval: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval = float(interval)
        self.samples: list[Sample] = []
        self._monitors: list[BaseMetricsMonitor] = [CPUMonitor()]
        if (gpu := _gpu_monitor()) is not None:
            self._monitors.append(gpu)
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _sample(self) -> None:
        values: dict[str, float] = {}
        for monitor in self._monitors:
            try:
                monitor.collect_metrics()
                values.update({k: float(v[-1]) for k, v in monitor.metrics.items() if v})
                monitor.clear_metrics()
            except Exception as exc:  # noqa: BLE001 - a monitor failing must not fail the work
                log.debug("system metrics: %s failed: %s", type(monitor).__name__, exc)
        values[PROCESS_RSS] = self._process.memory_info().rss / 1e6
        now = int(time.time() * 1000)
        with self._lock:
            step = self.samples[-1].step + 1 if self.samples else 0
            self.samples.extend(Sample(SYSTEM_PREFIX + k, round(v, 1), now, step) for k, v in sorted(values.items()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> SystemSampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="dataeff-system-metrics", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def peaks(self) -> dict[str, float]:
        """The largest value of each sampled metric (name without the prefix)."""
        out: dict[str, float] = {}
        for s in self.samples:
            name = s.name.removeprefix(SYSTEM_PREFIX)
            out[name] = max(out.get(name, s.value), s.value)
        return out


def samples_from(data: Sequence[Mapping[str, Any]] | None) -> list[Sample]:
    """Samples read back from their ``as_dict`` form (a kept result on disk); ``None``: none."""
    return [Sample.from_dict(d) for d in data or ()]


__all__ = ["PROCESS_RSS", "SYSTEM_PREFIX", "Sample", "SystemSampler", "samples_from"]
