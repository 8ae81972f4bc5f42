"""Smoke test of the benchmark runner on the tiny model: 2 repetitions, one fresh process per measurement."""

from __future__ import annotations

import json

from tiny import CORPUS

from benchmarks.__main__ import main as bench_main
from benchmarks.runner import BenchConfig, run_benchmarks, to_markdown
from dataeff.data import write_jsonl


def test_runner_on_tiny_model(tiny_model_dir, tmp_path):
    rows = [
        {"id": str(i), "prompt": f"{CORPUS[i % 4][: 30 + i]}", "answer": ["yes", "no", "play_music"][i % 3]}
        for i in range(12)
    ]
    task = write_jsonl(tmp_path / "task.jsonl", rows)
    cfg = BenchConfig.quick(
        model=str(tiny_model_dir),
        task=str(task),
        n_examples=6,
        pool=12,
        naive_pool=6,
        max_new_tokens=4,
        sweep_examples=(4,),
        sweep_ranks=(4,),
        sweep_baseline_max=0,
        rank=8,
        threads=1,
        sections=("coslow", "confidence", "sweep"),
    )
    res = run_benchmarks(cfg, log=lambda m: None)
    c = res["coslow"]
    assert c["naive"]["reps"] == 2 and c["dataeff"]["reps"] == 2 and len(c["dataeff"]["all_s"]) == 2
    assert c["coslow_abs_diff"] < 1e-4 and -1 < c["dataeff"]["coslow"] < 1
    assert c["naive"]["median_peak_mb"] >= c["naive"]["rss_after_load_mb"] > 0
    assert c["speedup"] > 0 and "projection" not in c
    f = res["confidence"]
    assert f["max_abs_diff"] < 1e-4 and f["dataeff"]["examples"] == 12 and f["naive"]["examples"] == 6
    assert res["sweep"][0]["n_examples"] == 4 and "naive_s" not in res["sweep"][0]
    text = to_markdown(res, "python -m benchmarks --quick")
    assert "speed-up naive/dataeff" in text and "| naive |" in text and "Scaling sweep" in text

    out = tmp_path / "bench.json"
    assert (
        bench_main(
            [
                "--quick",
                "--model",
                str(tiny_model_dir),
                "--task",
                str(task),
                "--sections",
                "coslow",
                "--reps",
                "1",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["coslow"]["coslow_abs_diff"] < 1e-4 and data["config"]["reps"] == 1
