"""How well the calibration carry-over (``Calibration.at_cutoff``) predicts real curves, out of sample.

``python -m benchmarks carry-over [--paper DIR] [--folds 10] [--level 0.9]``: for every pair of axes N -> N'
(N in 100, 200, 500, 1000; N' in 633, 1000, 5000), cut each of the paper's published curves at N, and
compare the carried-over AUC with the curve's real AUC up to N' (:mod:`dataeff.carry_over`). Prints a
Markdown table (docs/calibration-smollm2.md holds the one it printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAIRS = (
    (100, 633),
    (100, 1000),
    (100, 5000),
    (200, 633),
    (200, 1000),
    (200, 5000),
    (500, 1000),
    (500, 5000),
    (1000, 5000),
)


def main(argv: list[str] | None = None) -> int:
    from dataeff.carry_over import carry_over_table, check_carry_over
    from dataeff.replay import load_paper_curves

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks carry-over",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results"
    parser.add_argument("--paper", type=Path, default=default, help="the paper's results folder (finetune_results/)")
    parser.add_argument("--folds", type=int, default=10, help="grouped folds over tasks")
    parser.add_argument("--level", type=float, default=0.9, help="nominal coverage of the reported interval")
    args = parser.parse_args(argv)
    curves = load_paper_curves(args.paper)
    checks = [check_carry_over(curves, a, b, folds=args.folds, level=args.level) for a, b in PAIRS]
    print(carry_over_table(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
