"""benchmarks/bench_model.py runs end to end (tiny model, one round) and prints one JSON line per case."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model.py"


def test_quick_benchmark_prints_one_measurement_line_per_case():
    cases = ["infer-b32", "train-b32-ckpt", "train-b32-dense"]
    command = [sys.executable, str(BENCHMARK), "--quick", "--rounds", "1", "--cases", *cases]
    finished = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    lines = [json.loads(line) for line in finished.stdout.strip().splitlines()]
    assert [line["case"] for line in lines] == cases
    assert lines[0]["videos_per_s"] > 0 and lines[1]["step_s"] > 0 and lines[2]["step_s"] > 0
    assert lines[1]["checkpointing"] and lines[2]["attention"] == "dense"
    assert all(line["peak_gb"] > 0 and line["gflops"] > 0 and line["sgemm_gflops"] > 0 for line in lines)
