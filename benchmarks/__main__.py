"""``python -m benchmarks replay ...`` (estimation quality, see benchmarks/replay.py),
``python -m benchmarks dtype ...`` (CoS-Low by dtype, see benchmarks/dtype.py) or
``python -m benchmarks [--quick] [--device cpu|cuda] [--out FILE.md|FILE.json] [--sections ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.runner import SECTIONS, BenchConfig, run_benchmarks, to_markdown


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["replay"]:
        from benchmarks.replay import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["dtype"]:
        from benchmarks.dtype import main as dtype_main

        return dtype_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 repetitions (minutes)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", help="write results: .json (raw) or .md (tables)")
    parser.add_argument("--model", help="model source (default smollm2)")
    parser.add_argument("--task", help="BIG-bench task name or a JSONL/CSV file (default sports_understanding)")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS)
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in dict(
            device=args.device, model=args.model, task=args.task, reps=args.reps, threads=args.threads
        ).items()
        if v is not None
    }
    if args.sections:
        overrides["sections"] = tuple(args.sections)
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
