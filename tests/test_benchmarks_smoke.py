"""Smoke test of the benchmark runner on the tiny model: 2 repetitions, one fresh process per measurement."""

from __future__ import annotations

import json

from tiny import CORPUS

from benchmarks.__main__ import main as bench_main
from benchmarks.runner import BenchConfig, run_benchmarks, to_markdown
from dataeff.data import write_jsonl


def test_runner_on_tiny_model(tiny_model_dir, tmp_path, capsys):
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
    assert c["dataeff"]["batch_size"] == 8 and c["dataeff"]["gram"]["storage"] == "one-batch"  # CPU default, 6 ex
    f = res["confidence"]
    assert f["max_abs_diff"] < 1e-4 and f["dataeff"]["examples"] == 12 and f["naive"]["examples"] == 6
    # the previous path (one generate per batch) is measured in the same run, with the same answers
    assert f["generate"]["examples"] == 12 and f["max_abs_diff_generate"] < 1e-4 and f["same_answers_as_generate"]
    assert f["dataeff"]["batch_size"] == f["generate"]["batch_size"] == 16 and f["speedup_over_generate"] > 0
    assert res["sweep"][0]["n_examples"] == 4 and "naive_s" not in res["sweep"][0]
    text = to_markdown(res, "python -m benchmarks --quick")
    assert "speed-up naive/dataeff" in text and "| naive |" in text and "Scaling sweep" in text
    assert "dataeff before (one `generate` per batch)" in text

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
                "scale",
                "--scale-examples",
                "8",
                "--batch-size",
                "3",
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
    scale = data["scale"][0]
    assert data["config"]["reps"] == 1 and scale["n_examples"] == 8
    assert scale["exact"]["batch_size"] == 3 and scale["exact"]["gram"]["storage"] == "disk"  # rows kept (CPU)
    assert scale["projection"]["gram"]["storage"] == "sketch" and scale["projection_abs_diff"] < 0.05
    assert "CoS-Low at scale" in capsys.readouterr().out


def test_shapes_have_the_published_sizes():
    """--shape builds the real configurations (counted on the meta device: nothing allocated)."""
    import torch
    from transformers import LlamaForCausalLM

    from benchmarks.shapes import shape_config

    sizes = {}
    for shape in ("llama-3.1-8b", "llama-3.2-1b", "smollm2"):
        with torch.device("meta"):
            sizes[shape] = sum(p.numel() for p in LlamaForCausalLM(shape_config(shape)).parameters())
    assert sizes == {"llama-3.1-8b": 8_030_261_248, "llama-3.2-1b": 1_235_814_400, "smollm2": 134_515_008}


def test_help_names_the_gpu_command(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--help"])
    assert exit_info.value.code == 0
    assert "--shape" in capsys.readouterr().out
    from app.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:  # `dataeff bench --help` teaches the same options
        cli_main(["bench", "--help"])
    assert exit_info.value.code == 0 and "--shape" in capsys.readouterr().out
