"""``python -m benchmarks replay ...`` (estimation quality, see benchmarks/replay.py),
``python -m benchmarks dtype ...`` (CoS-Low by dtype, see benchmarks/dtype.py),
``python -m benchmarks carry-over ...`` (the calibration carry-over against real curves, benchmarks/carry_over.py) or
``python -m benchmarks [--quick] [--device cpu|cuda] [--shape llama-3.1-8b] [--out FILE.md|FILE.json] [--sections ...]``:
speed and memory of dataeff against the naive reference algorithms (docs/benchmarks.md).

On a GPU without downloads: ``python -m benchmarks --device cuda --shape llama-3.1-8b --out gpu.md``
(random weights of the real configuration, the SmolLM2 tokenizer of the offline package; sections
coslow, projection, confidence and scale)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.runner import SECTIONS, BenchConfig, run_benchmarks, to_markdown
from benchmarks.shapes import SHAPES

SHAPE_SECTIONS = ("coslow", "projection", "confidence", "scale")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `dataeff bench -- --quick ...` passes the separator on
        argv = argv[1:]
    if argv[:1] == ["replay"]:
        from benchmarks.replay import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["carry-over"]:
        from benchmarks.carry_over import main as carry_over_main

        return carry_over_main(argv[1:])
    if argv[:1] == ["dtype"]:
        from benchmarks.dtype import main as dtype_main

        return dtype_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions (minutes)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", help="write results: .json (raw) or .md (tables)")
    parser.add_argument("--model", help="model source (default smollm2)")
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        help="random weights of this real shape instead of --model (no download; default sections "
        + " ".join(SHAPE_SECTIONS)
        + ")",
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="model dtype on CUDA (default bf16)")
    parser.add_argument("--task", help="BIG-bench task name or a JSONL/CSV file (default sports_understanding)")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS)
    parser.add_argument("--n-examples", type=int, help="CoS-Low examples (default 32)")
    parser.add_argument("--pool", type=int, help="confidence prompts for dataeff (default 500)")
    parser.add_argument("--naive-pool", type=int, help="confidence prompts for the naive path (default 48)")
    parser.add_argument("--batch-size", type=int, help="CoS-Low batch size (default: dataeff's choice for the device)")
    parser.add_argument(
        "--conf-batch-size", type=int, help="confidence batch size (default: dataeff's choice for the device)"
    )
    parser.add_argument(
        "--scale-examples", type=int, nargs="+", help="CoS-Low sizes of the scale section (default 128 512 1024)"
    )
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in dict(
            device=args.device,
            model=args.model,
            shape=args.shape,
            dtype=args.dtype,
            task=args.task,
            reps=args.reps,
            threads=args.threads,
            n_examples=args.n_examples,
            pool=args.pool,
            naive_pool=args.naive_pool,
            batch_size=args.batch_size,
            conf_batch_size=args.conf_batch_size,
        ).items()
        if v is not None
    }
    if args.scale_examples:
        overrides["scale_examples"] = tuple(args.scale_examples)
    if args.sections:
        overrides["sections"] = tuple(args.sections)
    elif args.shape:
        overrides["sections"] = SHAPE_SECTIONS
    cfg = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    results = run_benchmarks(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    text = to_markdown(results, command)
    print(text)
    if args.out:
        write_report(args.out, results, text)
    return 0


def write_report(path: str | Path, data, markdown: str) -> Path:
    """Write a benchmark's result: raw JSON for a ``.json`` path, else the markdown tables."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) if out.suffix == ".json" else markdown + "\n")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
