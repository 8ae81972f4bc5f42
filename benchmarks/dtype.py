"""How much CoS-Low moves with the dtype, and what each dtype costs (issue 10, section 3).

``python -m benchmarks dtype [--device cpu|cuda] [--task intent_recognition] [--n 32] [--seeds 0 1]
[--out docs/dtype.md]``: the same ``n`` random examples of a BIG-bench task (one set per seed), the
same LoRA seed, the real model, :func:`dataeff.coslow.compute_coslow` in

- ``fp32``: weights and arithmetic in fp32 (the default on every device);
- ``bf16-weights``: weights rounded to bf16, then computed in fp32 (what an fp32 pass over a
  bf16 checkpoint sees);
- ``bf16`` and ``fp16``: weights and arithmetic in that dtype.

Reports CoS-Low, the difference to fp32, seconds and (CUDA) peak GPU memory per variant.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

VARIANTS = ("fp32", "bf16-weights", "bf16", "fp16")


def run(device: str, task: str, n: int, seeds: list[int], model_source: str = "smollm2") -> list[dict]:
    import torch

    from dataeff.bigbench import load_bigbench_task
    from dataeff.coslow import compute_coslow
    from dataeff.models import load_model

    _, examples = load_bigbench_task(task)
    loaded = load_model(model_source, device=device, dtype="fp32")
    fp32_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    rows = []
    for seed in seeds:
        sample = random.Random(seed).sample(examples, n)
        base = None
        for variant in VARIANTS:
            loaded.model.load_state_dict(fp32_state)
            loaded.model.to(torch.float32)
            if variant == "bf16-weights":
                loaded.model.to(torch.bfloat16).to(torch.float32)
            elif variant in ("bf16", "fp16"):
                loaded.model.to(torch.bfloat16 if variant == "bf16" else torch.float16)
            loaded.dtype = next(loaded.model.parameters()).dtype
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = compute_coslow(loaded, sample, seed=0, progress=False).coslow
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
            base = value if variant == "fp32" else base
            if base is None:
                raise RuntimeError("the fp32 variant must come first (the others are compared with it)")
            rows.append(
                {
                    "task": task,
                    "sample_seed": seed,
                    "n": n,
                    "device": device,
                    "variant": variant,
                    "coslow": value,
                    "diff_vs_fp32": value - base,
                    "seconds": seconds,
                    "peak_mb": peak,
                }
            )
            print(
                f"{task} seed {seed} {variant:>12}: CoS-Low {value:.4f} (diff {value - base:+.4f}) {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"# CoS-Low by dtype\n\n`{command}`\n",
        "| task | sample seed | device | variant | CoS-Low | diff vs fp32 | seconds | peak GPU MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        lines.append(
            f"| {r['task']} | {r['sample_seed']} | {r['device']} | {r['variant']} | {r['coslow']:.4f} | "
            f"{r['diff_vs_fp32']:+.4f} | {r['seconds']:.1f} | {peak} |"
        )
    worst = {v: max(abs(r["diff_vs_fp32"]) for r in rows if r["variant"] == v) for v in VARIANTS}
    lines.append("\nLargest |difference| to fp32: " + ", ".join(f"{v} {worst[v]:.4f}" for v in VARIANTS[1:]) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks dtype", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--task", default="intent_recognition")
    parser.add_argument("--n", type=int, default=32, help="examples per sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one random sample per seed")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", help="write .md (table) or .json (rows)")
    args = parser.parse_args(argv)
    rows = run(args.device, args.task, args.n, args.seeds, args.model)
    text = to_markdown(rows, "python -m benchmarks dtype " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.out:
        from benchmarks.__main__ import write_report

        write_report(args.out, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
