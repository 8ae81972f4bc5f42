"""One measurement in a fresh process (so peak memory of one variant never mixes with another's).

``python -m benchmarks.worker '<json spec>'`` prints one JSON line: the spec plus ``seconds`` (wall
time of the computation only, model loading excluded), ``rss_after_load_mb``, ``peak_rss_mb``
(``ru_maxrss`` of this process), ``gpu_peak_mb`` (CUDA ``max_memory_allocated``, weights included)
and the result (``coslow`` or ``confidences``).

Spec keys: ``workload`` (``coslow`` | ``confidence``), ``variant`` (``naive`` | ``dataeff`` |
``projection``; confidence also ``generate``: dataeff's previous path, one ``model.generate`` per
batch), ``model``, ``shape`` (random weights of a real shape instead of ``model``, see
:mod:`benchmarks.shapes`), ``device``, ``dtype``, ``task``, ``n_examples`` (a task with fewer
examples is cycled), ``rank``, ``batch_size`` (``None``: dataeff's choice for the device),
``projection_dim``, ``seed``, ``chat_template``, ``max_new_tokens``, ``threads``, ``memory_budget``
and ``storage`` (CoS-Low rows, see :func:`dataeff.gradients.plan_gram`).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_examples(task: str, n: int, offset: int = 0, cycle: bool = False):
    """The first ``n`` examples (after ``offset``) of a BIG-bench task name or a JSONL/CSV file.

    ``cycle``: a task with fewer examples is repeated (new ids) up to ``n`` (scaling runs).
    """
    from pathlib import Path

    if Path(task).exists():
        from dataeff.data import read_examples

        examples = read_examples(task, require_answer=False)
    else:
        from dataeff.bigbench import load_bigbench_task

        examples = load_bigbench_task(task)[1]
    chosen = examples[offset : offset + n]
    if cycle and 0 < len(examples) and len(chosen) < n:
        from dataclasses import replace

        chosen = [
            replace(examples[(offset + k) % len(examples)], id=f"{examples[(offset + k) % len(examples)].id}#{k}")
            for k in range(n)
        ]
    if len(chosen) < n:
        raise SystemExit(f"{task}: only {len(chosen)} examples after offset {offset}, {n} requested")
    return chosen


def measure(spec: dict) -> dict:
    from dataeff.models import ALL_LINEAR_TARGETS, LoraSettings, load_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec.get("device", "cpu")
    dtype = "fp32" if device == "cpu" else spec.get("dtype") or "bf16"
    if spec.get("shape"):
        from benchmarks.shapes import load_shape

        loaded = load_shape(spec["shape"], device=device, dtype=dtype, seed=int(spec.get("seed", 0)))
    else:
        loaded = load_model(spec["model"], device=device, dtype=dtype)
    examples = load_examples(spec["task"], int(spec["n_examples"]), int(spec.get("offset", 0)), cycle=True)
    batch = spec.get("batch_size")
    batch_size = None if batch is None else int(batch)
    lora = LoraSettings(
        r=int(spec.get("rank", 64)), alpha=int(spec.get("alpha", 32)), target_modules=ALL_LINEAR_TARGETS
    )
    seed = int(spec.get("seed", 0))
    chat = bool(spec.get("chat_template", False))
    cuda = loaded.device.type == "cuda"
    gpu_after_load = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_after_load = torch.cuda.memory_allocated() / 2**20
    rss_after_load = _rss_mb()
    out = dict(spec)
    start = time.perf_counter()
    if spec["workload"] == "coslow":
        if spec["variant"] == "naive":
            from benchmarks.baseline import naive_coslow

            out["coslow"] = naive_coslow(
                loaded.model, loaded.tokenizer, examples, lora=lora, seed=seed, chat_template=chat
            )
        else:
            from dataeff.coslow import compute_coslow

            proj = spec.get("projection_dim") if spec["variant"] == "projection" else None
            res = compute_coslow(
                loaded,
                examples,
                lora=lora,
                seed=seed,
                chat_template=chat,
                batch_size=batch_size,
                projection_dim=proj,
                progress=False,
                memory_budget=spec.get("memory_budget"),
                storage=spec.get("storage") or "auto",
            )
            out["coslow"] = res.coslow
            out["batch_size_used"] = res.batch_size
            out["gram"] = res.gram
    elif spec["workload"] == "confidence":
        prompts = [e.prompt for e in examples]
        max_new = int(spec.get("max_new_tokens", 30))
        if spec["variant"] == "naive":
            from benchmarks.baseline import naive_confidence

            answers = naive_confidence(
                loaded.model, loaded.tokenizer, prompts, max_new_tokens=max_new, chat_template=chat
            )
            out["confidences"] = [float(sum(p) / len(p)) if p else 0.0 for _, p in answers]
        else:
            from dataeff.confidence import score_confidence

            scores = score_confidence(
                loaded,
                None,
                prompts,
                batch_size=batch_size,
                max_new_tokens=max_new,
                chat_template=chat,
                progress=False,
                evict=spec["variant"] != "generate",
            )
            out["confidences"] = [s.confidence for s in scores]
            out["n_tokens"] = [s.n_tokens for s in scores]
            out["batch_size_used"] = getattr(scores, "batch_size", batch_size)  # a ConfidenceScores list
            out["decoder"] = getattr(scores, "decoder", "")
    else:
        raise SystemExit(f"unknown workload {spec['workload']!r}")
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - start
    out["rss_after_load_mb"] = rss_after_load
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    out["gpu_after_load_mb"] = gpu_after_load
    out["device_name"] = torch.cuda.get_device_name() if cuda else "cpu"
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
