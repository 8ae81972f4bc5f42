"""One measurement in a fresh process (so peak memory of one variant never mixes with another's).

``python -m benchmarks.worker '<json spec>'`` prints one JSON line: the spec plus ``seconds`` (wall
time of the computation only, model loading excluded), ``rss_after_load_mb``, ``peak_rss_mb``
(``ru_maxrss`` of this process), ``gpu_peak_mb`` (CUDA ``max_memory_allocated``, weights included)
and the result (``coslow`` or ``confidences``).

Spec keys: ``workload`` (``coslow`` | ``confidence``), ``variant`` (``naive`` | ``dataeff`` |
``projection``), ``model``, ``device``, ``task``, ``n_examples``, ``rank``, ``batch_size``,
``projection_dim``, ``seed``, ``chat_template``, ``max_new_tokens``, ``threads``.
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


def load_examples(task: str, n: int, offset: int = 0):
    """The first ``n`` examples (after ``offset``) of a BIG-bench task name or a JSONL/CSV file."""
    from pathlib import Path

    if Path(task).exists():
        from dataeff.data import read_examples

        examples = read_examples(task, require_answer=False)
    else:
        from dataeff.bigbench import load_bigbench_task

        examples = load_bigbench_task(task)[1]
    chosen = examples[offset : offset + n]
    if len(chosen) < n:
        raise SystemExit(f"{task}: only {len(chosen)} examples after offset {offset}, {n} requested")
    return chosen


def measure(spec: dict) -> dict:
    from dataeff.models import ALL_LINEAR_TARGETS, LoraSettings, load_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec.get("device", "cpu")
    dtype = "fp32" if device == "cpu" else spec.get("dtype", "bf16")
    loaded = load_model(spec["model"], device=device, dtype=dtype)
    examples = load_examples(spec["task"], int(spec["n_examples"]), int(spec.get("offset", 0)))
    lora = LoraSettings(
        r=int(spec.get("rank", 64)), alpha=int(spec.get("alpha", 32)), target_modules=ALL_LINEAR_TARGETS
    )
    seed = int(spec.get("seed", 0))
    chat = bool(spec.get("chat_template", False))
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
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
                batch_size=int(spec.get("batch_size", 8)),
                projection_dim=proj,
                progress=False,
            )
            out["coslow"] = res.coslow
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
                batch_size=int(spec.get("batch_size", 16)),
                max_new_tokens=max_new,
                chat_template=chat,
                progress=False,
            )
            out["confidences"] = [s.confidence for s in scores]
    else:
        raise SystemExit(f"unknown workload {spec['workload']!r}")
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - start
    out["rss_after_load_mb"] = rss_after_load
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    out["device_name"] = torch.cuda.get_device_name() if cuda else "cpu"
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
