"""Benchmark runner: baseline vs dataeff on the same model, examples, LoRA settings and seed, in one run.

Every measurement runs in a fresh subprocess (:mod:`benchmarks.worker`) so peak memory is per
variant; variants alternate within each repetition (order flipped every other repetition) so
machine load affects both alike. Reported: median wall time, median peak memory (RSS on CPU,
``max_memory_allocated`` on GPU), ratio baseline/dataeff, and the CoS-Low / confidences of both.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("coslow", "projection", "confidence", "sweep")


@dataclass
class BenchConfig:
    """What to measure. Defaults are the full benchmark of issue 5; :meth:`quick` is a small version."""

    model: str = "smollm2"
    task: str = "sports_understanding"
    device: str = "cpu"
    reps: int = 3
    n_examples: int = 32
    rank: int = 64
    batch_size: int = 8
    seed: int = 0
    chat_template: bool = False
    projection_dim: int = 65536
    pool: int = 500
    naive_pool: int = 48
    conf_batch_size: int = 16
    max_new_tokens: int = 30
    sweep_examples: tuple[int, ...] = (16, 32, 64, 128)
    sweep_ranks: tuple[int, ...] = (8, 64)
    sweep_baseline_max: int = 32
    sweep_reps: int = 1
    threads: int | None = None
    sections: tuple[str, ...] = SECTIONS

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        base: dict[str, Any] = dict(
            reps=2,
            n_examples=8,
            pool=48,
            naive_pool=8,
            max_new_tokens=10,
            sweep_examples=(8, 16),
            sweep_ranks=(8,),
            sweep_baseline_max=8,
            projection_dim=4096,
        )
        base.update(overrides)
        return cls(**base)


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    """Run one measurement in a fresh ``python -m benchmarks.worker`` process and return its JSON."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(specs: dict[str, dict], reps: int, log=print) -> dict[str, list[dict]]:
    """Measure every named spec ``reps`` times, alternating them (order reversed on odd repetitions)."""
    names = list(specs)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            res = run_worker(specs[name])
            runs[name].append(res)
            extra = f", CoS-Low {res['coslow']:.6f}" if "coslow" in res else ""
            log(f"  rep {rep + 1}/{reps} {name}: {res['seconds']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB{extra}")
    return runs


def summarize(runs: list[dict]) -> dict:
    """Medians over repetitions of one variant."""
    peak_key = "gpu_peak_mb" if runs[0].get("gpu_peak_mb") is not None else "peak_rss_mb"
    return {
        "reps": len(runs),
        "median_s": statistics.median(r["seconds"] for r in runs),
        "all_s": [round(r["seconds"], 3) for r in runs],
        "median_peak_mb": statistics.median(r[peak_key] for r in runs),
        "peak_kind": "GPU max allocated" if peak_key == "gpu_peak_mb" else "RSS",
        "rss_after_load_mb": statistics.median(r["rss_after_load_mb"] for r in runs),
    }


def _spec(cfg: BenchConfig, **kw) -> dict:
    spec = dict(
        model=cfg.model,
        task=cfg.task,
        device=cfg.device,
        seed=cfg.seed,
        chat_template=cfg.chat_template,
        batch_size=cfg.batch_size,
        rank=cfg.rank,
        n_examples=cfg.n_examples,
        threads=cfg.threads,
    )
    spec.update(kw)
    return spec


def bench_coslow(cfg: BenchConfig, log=print) -> dict:
    """Naive vs dataeff exact (and projection mode when ``projection`` is a section) CoS-Low."""
    specs = {
        "naive": _spec(cfg, workload="coslow", variant="naive"),
        "dataeff": _spec(cfg, workload="coslow", variant="dataeff"),
    }
    if "projection" in cfg.sections:
        specs["projection"] = _spec(cfg, workload="coslow", variant="projection", projection_dim=cfg.projection_dim)
    log(f"CoS-Low: {cfg.model}, {cfg.n_examples} examples, r={cfg.rank}, {cfg.reps} reps")
    runs = alternate(specs, cfg.reps, log)
    out = {name: summarize(r) | {"coslow": r[0]["coslow"]} for name, r in runs.items()}
    naive, fast = out["naive"], out["dataeff"]
    out["speedup"] = naive["median_s"] / fast["median_s"]
    out["memory_ratio"] = fast["median_peak_mb"] / naive["median_peak_mb"]
    out["coslow_abs_diff"] = abs(naive["coslow"] - fast["coslow"])
    if "projection" in out:
        out["projection_memory_ratio"] = out["projection"]["median_peak_mb"] / naive["median_peak_mb"]
        out["projection_abs_diff"] = abs(out["projection"]["coslow"] - fast["coslow"])
        out["projection_speedup"] = naive["median_s"] / out["projection"]["median_s"]
    return out


def bench_confidence(cfg: BenchConfig, log=print) -> dict:
    """Batched confidence over the pool vs one-at-a-time generate + rescore over its first ``naive_pool``."""
    common = dict(workload="confidence", chat_template=True, max_new_tokens=cfg.max_new_tokens)
    specs = {
        "naive": _spec(cfg, variant="naive", n_examples=cfg.naive_pool, **common),
        "dataeff": _spec(cfg, variant="dataeff", n_examples=cfg.pool, batch_size=cfg.conf_batch_size, **common),
    }
    log(f"confidence: pool {cfg.pool} (naive on the first {cfg.naive_pool}), {cfg.reps} reps")
    runs = alternate(specs, cfg.reps, log)
    out = {name: summarize(r) for name, r in runs.items()}
    out["naive"]["examples"], out["dataeff"]["examples"] = cfg.naive_pool, cfg.pool
    for name in ("naive", "dataeff"):
        out[name]["examples_per_s"] = out[name]["examples"] / out[name]["median_s"]
    naive_c = runs["naive"][0]["confidences"]
    fast_c = runs["dataeff"][0]["confidences"][: len(naive_c)]
    diffs = [abs(a - b) for a, b in zip(naive_c, fast_c)]
    out["throughput_ratio"] = out["dataeff"]["examples_per_s"] / out["naive"]["examples_per_s"]
    out["max_abs_diff"] = max(diffs)
    out["n_diff_over_1e-4"] = sum(d > 1e-4 for d in diffs)
    out["mean_confidence"] = sum(runs["dataeff"][0]["confidences"]) / cfg.pool
    return out


def bench_sweep(cfg: BenchConfig, log=print) -> list[dict]:
    """dataeff (and naive up to ``sweep_baseline_max`` examples) over examples x rank."""
    rows = []
    for rank in cfg.sweep_ranks:
        for n in cfg.sweep_examples:
            specs = {"dataeff": _spec(cfg, workload="coslow", variant="dataeff", n_examples=n, rank=rank)}
            if n <= cfg.sweep_baseline_max:
                specs["naive"] = _spec(cfg, workload="coslow", variant="naive", n_examples=n, rank=rank)
            log(f"sweep: {n} examples, r={rank}")
            runs = alternate(specs, cfg.sweep_reps, log)
            row = {"n_examples": n, "rank": rank}
            for name, r in runs.items():
                s = summarize(r)
                row[f"{name}_s"], row[f"{name}_peak_mb"], row[f"{name}_coslow"] = (
                    s["median_s"],
                    s["median_peak_mb"],
                    r[0]["coslow"],
                )
            rows.append(row)
    return rows


def machine_info() -> dict:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["load_avg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def run_benchmarks(cfg: BenchConfig, log=print) -> dict:
    """Run the chosen sections; returns a JSON-ready dict."""
    results: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info()}
    if "coslow" in cfg.sections or "projection" in cfg.sections:
        results["coslow"] = bench_coslow(cfg, log)
    if "confidence" in cfg.sections:
        results["confidence"] = bench_confidence(cfg, log)
    if "sweep" in cfg.sections:
        results["sweep"] = bench_sweep(cfg, log)
    try:
        results["machine"]["load_avg_end"] = os.getloadavg()
    except OSError:
        pass
    return results


def to_markdown(results: dict, command: str = "") -> str:
    """Markdown tables of :func:`run_benchmarks` results."""
    m, cfg = results["machine"], results["config"]
    lines = [
        f"Measured {m['date']} on {m.get('cpu', 'cpu')} ({m['cpu_count']} cores), torch {m['torch']}, "
        f"device `{cfg['device']}`; load average at start {m.get('load_avg_start')}, end {m.get('load_avg_end')}.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    c = results.get("coslow")
    if c:
        lines += [
            f"### CoS-Low: {cfg['model']}, {cfg['n_examples']} {cfg['task']} examples, LoRA r={cfg['rank']} "
            f"on all seven projections, seed {cfg['seed']}, fp32, {cfg['reps']} reps",
            "",
            "| variant | median wall s (all) | median peak MB | CoS-Low |",
            "|---|---|---|---|",
        ]
        for name in ("naive", "dataeff", "projection"):
            if name in c:
                v = c[name]
                label = f"projection (k={cfg['projection_dim']})" if name == "projection" else name
                lines.append(
                    f"| {label} | {v['median_s']:.2f} ({', '.join(f'{s:.1f}' for s in v['all_s'])}) | "
                    f"{v['median_peak_mb']:.0f} | {v['coslow']:.6f} |"
                )
        lines += [
            "",
            f"- speed-up naive/dataeff: **{c['speedup']:.2f}x**; dataeff peak memory = "
            f"**{100 * c['memory_ratio']:.0f}%** of naive; |CoS-Low difference| = {c['coslow_abs_diff']:.2e}",
        ]
        if "projection" in c:
            lines.append(
                f"- projection: peak memory **{100 * c['projection_memory_ratio']:.0f}%** of naive, "
                f"|CoS-Low - exact| = **{c['projection_abs_diff']:.4f}**, speed-up {c['projection_speedup']:.2f}x"
            )
        lines.append("")
    f = results.get("confidence")
    if f:
        lines += [
            f"### Confidence scoring ({cfg['max_new_tokens']} new tokens max, chat template)",
            "",
            "| variant | examples | median wall s | examples/s | median peak MB |",
            "|---|---|---|---|---|",
        ]
        for name in ("naive", "dataeff"):
            v = f[name]
            lines.append(
                f"| {name} | {v['examples']} | {v['median_s']:.2f} | {v['examples_per_s']:.2f} | {v['median_peak_mb']:.0f} |"
            )
        lines += [
            "",
            f"- throughput dataeff/naive: **{f['throughput_ratio']:.1f}x**; on the {f['naive']['examples']} "
            f"examples both scored: max |confidence difference| = {f['max_abs_diff']:.2e} "
            f"({f['n_diff_over_1e-4']} above 1e-4)",
            "",
        ]
    s = results.get("sweep")
    if s:
        lines += [
            f"### Scaling sweep (one process per cell; naive only up to {cfg['sweep_baseline_max']} examples)",
            "",
            "| examples | rank | dataeff s | dataeff peak MB | naive s | naive peak MB | ratio | CoS-Low |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in s:
            naive = "naive_s" in r
            lines.append(
                f"| {r['n_examples']} | {r['rank']} | {r['dataeff_s']:.2f} | {r['dataeff_peak_mb']:.0f} | "
                f"{r['naive_s']:.2f} | {r['naive_peak_mb']:.0f} | {r['naive_s'] / r['dataeff_s']:.2f}x | "
                f"{r['dataeff_coslow']:.4f} |"
                if naive
                else f"| {r['n_examples']} | {r['rank']} | {r['dataeff_s']:.2f} | {r['dataeff_peak_mb']:.0f} | - | - | - | "
                f"{r['dataeff_coslow']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)
