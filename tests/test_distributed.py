"""Two CPU processes (torchrun, gloo): gathered OCL losses and sharded evaluation equal the single-process results.

One launch runs every check (tests/dist_scripts/ocl_and_eval_worker.py); each test below reads one check's outcome
on both processes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "dist_scripts" / "ocl_and_eval_worker.py"
NUM_PROCESSES = 2


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory) -> list[dict[str, str]]:
    output_dir = tmp_path_factory.mktemp("ocl_and_eval_worker")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NUM_PROCESSES}",
               str(WORKER), str(output_dir)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]


def assert_passed_on_every_process(results: list[dict[str, str]], check: str) -> None:
    for rank, outcome in enumerate(results):
        assert outcome[check] == "ok", f"process {rank}:\n{outcome[check]}"


def test_gathered_loss_and_feature_gradients_equal_single_process_on_concatenated_batch(worker_results):
    assert_passed_on_every_process(worker_results, "full_loss_gradients")


def test_local_loss_gives_the_same_gradients_and_mean_loss(worker_results):
    assert_passed_on_every_process(worker_results, "local_loss_gradients")


def test_ddp_averaged_parameter_gradients_equal_single_process(worker_results):
    assert_passed_on_every_process(worker_results, "ddp_gradients_full")
    assert_passed_on_every_process(worker_results, "ddp_gradients_local")


def test_uneven_evaluation_split_evaluates_every_item_once_with_single_process_metrics(worker_results):
    assert_passed_on_every_process(worker_results, "sharded_evaluation")


def test_process_without_items_joins_the_gather(worker_results):
    assert_passed_on_every_process(worker_results, "empty_shard")
