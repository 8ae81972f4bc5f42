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
SECTIONS = ("coslow", "projection", "confidence", "sweep", "scale")
DEFAULT_SECTIONS = ("coslow", "projection", "confidence", "sweep")


@dataclass
class BenchConfig:
    """What to measure. Defaults are the full benchmark of issue 5; :meth:`quick` is a small version.

    ``shape``: random weights of a real shape (:mod:`benchmarks.shapes`) instead of ``model``.
    ``batch_size`` / ``conf_batch_size``: ``None`` = dataeff's default for the device (8 / 16 on CPU,
    chosen from free memory on CUDA). ``scale_examples``: CoS-Low sizes of the ``scale`` section
    (dataeff exact and projection only; the task is cycled past its size).
    """

    model: str = "smollm2"
    task: str = "sports_understanding"
    device: str = "cpu"
    shape: str | None = None
    dtype: str | None = None
    reps: int = 3
    n_examples: int = 32
    rank: int = 64
    batch_size: int | None = None
    seed: int = 0
    chat_template: bool = False
    projection_dim: int = 65536
    pool: int = 500
    naive_pool: int = 48
    conf_batch_size: int | None = None
    max_new_tokens: int = 30
    sweep_examples: tuple[int, ...] = (16, 32, 64, 128)
    sweep_ranks: tuple[int, ...] = (8, 64)
    sweep_baseline_max: int = 32
    sweep_reps: int = 1
    scale_examples: tuple[int, ...] = (128, 512, 1024)
    threads: int | None = None
    sections: tuple[str, ...] = DEFAULT_SECTIONS

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
            scale_examples=(16, 32),
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
        "gpu_after_load_mb": runs[0].get("gpu_after_load_mb"),
        "device_name": runs[0].get("device_name"),
    }


def _spec(cfg: BenchConfig, **kw) -> dict:
    spec = dict(
        model=cfg.model,
        shape=cfg.shape,
        dtype=cfg.dtype,
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
    """Naive vs dataeff exact at its defaults, dataeff exact with every row kept in memory (``--storage
    memory``: the speed/memory trade-off of the default's row storage) and projection mode when
    ``projection`` is a section."""
    specs = {
        "naive": _spec(cfg, workload="coslow", variant="naive"),
        "dataeff": _spec(cfg, workload="coslow", variant="dataeff"),
        "in-memory": _spec(cfg, workload="coslow", variant="dataeff", storage="memory"),
    }
    if "projection" in cfg.sections:
        specs["projection"] = _spec(cfg, workload="coslow", variant="projection", projection_dim=cfg.projection_dim)
    log(f"CoS-Low: {cfg.model}, {cfg.n_examples} examples, r={cfg.rank}, {cfg.reps} reps")
    runs = alternate(specs, cfg.reps, log)
    out = {
        name: summarize(r)
        | {"coslow": r[0]["coslow"], "batch_size": r[0].get("batch_size_used"), "gram": r[0].get("gram")}
        for name, r in runs.items()
    }
    naive, fast = out["naive"], out["dataeff"]
    out["speedup"] = naive["median_s"] / fast["median_s"]
    out["memory_ratio"] = fast["median_peak_mb"] / naive["median_peak_mb"]
    out["coslow_abs_diff"] = abs(naive["coslow"] - fast["coslow"])
    out["in_memory_speedup"] = naive["median_s"] / out["in-memory"]["median_s"]
    out["in_memory_memory_ratio"] = out["in-memory"]["median_peak_mb"] / naive["median_peak_mb"]
    if "projection" in out:
        out["projection_memory_ratio"] = out["projection"]["median_peak_mb"] / naive["median_peak_mb"]
        out["projection_abs_diff"] = abs(out["projection"]["coslow"] - fast["coslow"])
        out["projection_speedup"] = naive["median_s"] / out["projection"]["median_s"]
    return out


def bench_confidence(cfg: BenchConfig, log=print) -> dict:
    """Confidence over the pool: dataeff (finished rows leave the batch, freed places refilled) and its
    previous path (one ``generate`` per batch, ``generate``) vs one-at-a-time generate + rescore over the
    first ``naive_pool``."""
    common = dict(workload="confidence", chat_template=True, max_new_tokens=cfg.max_new_tokens)
    specs = {
        "naive": _spec(cfg, variant="naive", n_examples=cfg.naive_pool, **common),
        "generate": _spec(cfg, variant="generate", n_examples=cfg.pool, batch_size=cfg.conf_batch_size, **common),
        "dataeff": _spec(cfg, variant="dataeff", n_examples=cfg.pool, batch_size=cfg.conf_batch_size, **common),
    }
    log(f"confidence: pool {cfg.pool} (naive on the first {cfg.naive_pool}), {cfg.reps} reps")
    runs = alternate(specs, cfg.reps, log)
    out: dict[str, Any] = {name: summarize(r) for name, r in runs.items()}
    out["naive"]["examples"] = cfg.naive_pool
    out["generate"]["examples"] = out["dataeff"]["examples"] = cfg.pool
    for name in specs:
        out[name]["examples_per_s"] = out[name]["examples"] / out[name]["median_s"]
        out[name]["batch_size"] = runs[name][0].get("batch_size_used")
    naive_c = runs["naive"][0]["confidences"]
    fast_c = runs["dataeff"][0]["confidences"]
    diffs = [abs(a - b) for a, b in zip(naive_c, fast_c[: len(naive_c)])]
    prev = [abs(a - b) for a, b in zip(runs["generate"][0]["confidences"], fast_c)]
    out["throughput_ratio"] = out["dataeff"]["examples_per_s"] / out["naive"]["examples_per_s"]
    out["generate_throughput_ratio"] = out["generate"]["examples_per_s"] / out["naive"]["examples_per_s"]
    out["speedup_over_generate"] = out["dataeff"]["examples_per_s"] / out["generate"]["examples_per_s"]
    out["max_abs_diff"] = max(diffs)
    out["n_diff_over_1e-4"] = sum(d > 1e-4 for d in diffs)
    out["max_abs_diff_generate"] = max(prev)
    out["same_answers_as_generate"] = runs["generate"][0].get("n_tokens") == runs["dataeff"][0].get("n_tokens")
    out["mean_confidence"] = sum(fast_c) / cfg.pool
    tokens = runs["dataeff"][0].get("n_tokens") or []
    out["answer_tokens"] = {
        "min": min(tokens, default=0),
        "median": statistics.median(tokens or [0]),
        "max": max(tokens, default=0),
    }
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


def bench_scale(cfg: BenchConfig, log=print) -> list[dict]:
    """dataeff exact (its defaults: batch and row storage chosen for the device) and projection at
    ``scale_examples`` examples; no naive run (it keeps every per-example gradient)."""
    rows = []
    for n in cfg.scale_examples:
        specs = {
            "exact": _spec(cfg, workload="coslow", variant="dataeff", n_examples=n),
            "projection": _spec(
                cfg, workload="coslow", variant="projection", n_examples=n, projection_dim=cfg.projection_dim
            ),
        }
        log(f"scale: {n} examples, r={cfg.rank}")
        row: dict[str, Any] = {"n_examples": n}
        for name, spec in specs.items():
            try:
                res = run_worker(spec)
            except RuntimeError as exc:  # e.g. out of memory: reported, not fatal
                row[name] = {"error": str(exc).strip().splitlines()[-1][:300]}
                log(f"  {name}: failed: {row[name]['error']}")
                continue
            peak = res.get("gpu_peak_mb") if res.get("gpu_peak_mb") is not None else res["peak_rss_mb"]
            row[name] = {
                "seconds": res["seconds"],
                "peak_mb": peak,
                "above_weights_mb": peak - (res.get("gpu_after_load_mb") or res["rss_after_load_mb"]),
                "coslow": res["coslow"],
                "batch_size": res.get("batch_size_used"),
                "gram": res.get("gram"),
            }
            log(f"  {name}: {res['seconds']:.2f} s, peak {peak:.0f} MB, CoS-Low {res['coslow']:.6f}, {res.get('gram')}")
        if "coslow" in row.get("exact", {}) and "coslow" in row.get("projection", {}):
            row["projection_abs_diff"] = abs(row["exact"]["coslow"] - row["projection"]["coslow"])
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
    if "scale" in cfg.sections:
        results["scale"] = bench_scale(cfg, log)
    try:
        results["machine"]["load_avg_end"] = os.getloadavg()
    except OSError:
        pass
    return results


def _model_label(cfg: dict) -> str:
    return f"random-weight {cfg['shape']} shape" if cfg.get("shape") else cfg["model"]


def _device_name(results: dict) -> str:
    for section in ("coslow", "confidence"):
        for v in (results.get(section) or {}).values():
            if isinstance(v, dict) and v.get("device_name"):
                return str(v["device_name"])
    return ""


def to_markdown(results: dict, command: str = "") -> str:
    """Markdown tables of :func:`run_benchmarks` results."""
    m, cfg = results["machine"], results["config"]
    dtype = cfg.get("dtype") or ("fp32" if cfg["device"] == "cpu" else "bf16")
    gpu = _device_name(results)
    lines = [
        f"Measured {m['date']} on {m.get('cpu', 'cpu')} ({m['cpu_count']} cores), torch {m['torch']}, "
        f"device `{cfg['device']}`{f' ({gpu})' if gpu and gpu != 'cpu' else ''}; load average at start "
        f"{m.get('load_avg_start')}, end {m.get('load_avg_end')}.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    c = results.get("coslow")
    if c:
        lines += [
            f"### CoS-Low: {_model_label(cfg)}, {cfg['n_examples']} {cfg['task']} examples, LoRA r={cfg['rank']} "
            f"on all seven projections, seed {cfg['seed']}, {dtype}, {cfg['reps']} reps",
            "",
            "| variant | median wall s (all) | median peak MB | batch | rows kept | CoS-Low |",
            "|---|---|---|---|---|---|",
        ]
        labels = {"in-memory": "dataeff, `--storage memory`", "projection": f"projection (k={cfg['projection_dim']})"}
        for name in ("naive", "dataeff", "in-memory", "projection"):
            if name in c:
                v = c[name]
                label = labels.get(name, name)
                gram = v.get("gram") or {}
                storage = f"{gram.get('storage')}" + (f" x{gram['passes']}" if gram.get("passes", 1) > 1 else "")
                lines.append(
                    f"| {label} | {v['median_s']:.2f} ({', '.join(f'{s:.1f}' for s in v['all_s'])}) | "
                    f"{v['median_peak_mb']:.0f} | {v.get('batch_size') or 1 if name != 'naive' else 1} | "
                    f"{storage if gram else '-'} | {v['coslow']:.6f} |"
                )
        lines += [
            "",
            f"- speed-up naive/dataeff: **{c['speedup']:.2f}x**; dataeff peak memory = "
            f"**{100 * c['memory_ratio']:.0f}%** of naive; |CoS-Low difference| = {c['coslow_abs_diff']:.2e}",
        ]
        if "in_memory_speedup" in c:
            lines.append(
                f"- rows in memory instead: speed-up **{c['in_memory_speedup']:.2f}x**, peak memory "
                f"**{100 * c['in_memory_memory_ratio']:.0f}%** of naive"
            )
        if "projection" in c:
            lines.append(
                f"- projection: peak memory **{100 * c['projection_memory_ratio']:.0f}%** of naive, "
                f"|CoS-Low - exact| = **{c['projection_abs_diff']:.4f}**, speed-up {c['projection_speedup']:.2f}x"
            )
        lines.append("")
    f = results.get("confidence")
    if f:
        lines += [
            f"### Confidence scoring: {_model_label(cfg)}, {cfg['max_new_tokens']} new tokens max, chat template",
            "",
            "| variant | examples | batch | median wall s | examples/s | vs naive | median peak MB |",
            "|---|---|---|---|---|---|---|",
        ]
        labels = {
            "naive": "naive (generate + rescore, one at a time)",
            "generate": "dataeff before (one `generate` per batch)",
            "dataeff": "dataeff (finished rows leave, batch refilled)",
        }
        for name in ("naive", "generate", "dataeff"):
            if name not in f:
                continue
            v = f[name]
            ratio = v["examples_per_s"] / f["naive"]["examples_per_s"]
            lines.append(
                f"| {labels[name]} | {v['examples']} | {v.get('batch_size') or 1} | {v['median_s']:.2f} | "
                f"{v['examples_per_s']:.2f} | {ratio:.2f}x | {v['median_peak_mb']:.0f} |"
            )
        lines += [
            "",
            f"- throughput dataeff/naive: **{f['throughput_ratio']:.1f}x** (before: {f['generate_throughput_ratio']:.1f}x; "
            f"dataeff/before {f['speedup_over_generate']:.2f}x); on the {f['naive']['examples']} examples both scored: "
            f"max |confidence difference| = {f['max_abs_diff']:.2e} ({f['n_diff_over_1e-4']} above 1e-4); vs before "
            f"on all {f['dataeff']['examples']}: {f['max_abs_diff_generate']:.2e}, same answer lengths: "
            f"{f['same_answers_as_generate']}",
            f"- answer tokens (dataeff): min {f['answer_tokens']['min']}, median {f['answer_tokens']['median']}, "
            f"max {f['answer_tokens']['max']}",
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
    sc = results.get("scale")
    if sc:
        lines += [
            f"### CoS-Low at scale: {_model_label(cfg)}, r={cfg['rank']}, {dtype}, dataeff defaults (one run per cell)",
            "",
            "| examples | variant | wall s | peak MB | above load MB | batch | rows kept | CoS-Low |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sc:
            for name in ("exact", "projection"):
                v = r.get(name) or {}
                if "error" in v:
                    lines.append(f"| {r['n_examples']} | {name} | failed: {v['error']} | | | | | |")
                    continue
                gram = v.get("gram") or {}
                storage = f"{gram.get('storage')}" + (f" x{gram['passes']}" if gram.get("passes", 1) > 1 else "")
                lines.append(
                    f"| {r['n_examples']} | {name} | {v['seconds']:.2f} | {v['peak_mb']:.0f} | "
                    f"{v['above_weights_mb']:.0f} | {v.get('batch_size')} | {storage} | {v['coslow']:.6f} |"
                )
            if "projection_abs_diff" in r:
                lines.append(
                    f"| {r['n_examples']} | abs(projection - exact) | | | | | | {r['projection_abs_diff']:.4f} |"
                )
        lines.append("")
    return "\n".join(lines)
