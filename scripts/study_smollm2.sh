#!/usr/bin/env bash
# The SmolLM2-135M-Instruct + LoRA calibration study (issue 10) on CPU: re-run the same command to
# resume (MLflow under .cache/study on this machine; finished tasks kept in docs/study/, committed).
# The CPU grid stops at 200 labels (a 500-label fine-tune alone takes ~10 min on 2 cores); tasks kept from
# an earlier run on the 0-500 grid are reused restricted to it. On a GPU add --device cuda and a larger grid (--budgets 0,50,100,200,500,1000 --seeds 0,1).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/study
exec .venv/bin/dataeff study --model smollm2 --family smollm2-135m-instruct-lora --name study-smollm2-lora-cpu \
  --tasks intent_recognition,bbc_news,spam_assassin,tweet_sentiment,sports_understanding,hyperbaton,navigate,implicatures,logical_fallacy_detection,strategyqa,epistemic_reasoning,presuppositions_as_nli,winowhy \
  --budgets 0,50,100,200 --seeds 0 --eval-size 200 --draws 3 --max-pool 700 --epochs 2 \
  --tracking-uri "sqlite:///$PWD/.cache/study/mlflow.db" --results docs/study --out docs/study.md \
  --calibration-out .cache/study/smollm2-135m-instruct-lora.json "$@"
