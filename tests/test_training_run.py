"""Real training runs on generated moving-shape clips, through the same code as `clip-vip train`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_CONFIG_DIR, offline_env
from training.cli import main as clip_vip
from training.synthetic_data import generate_moving_shapes
from training.train import DataArguments, ModelArguments, train
from training.trainer import ClipVipTrainer, ClipVipTrainingArguments


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    manifests = generate_moving_shapes(root / "data", num_train=252, num_test=42, size=32, num_frames=8, seed=0)
    config = json.loads((TINY_CONFIG_DIR / "config.json").read_text())
    config["vision_config"].update(image_size=32, patch_size=16)
    config["logit_scale_init_value"] = 2.6592  # CLIP's from-scratch temperature; 4.6 is the authors' fine-tuning one
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(config))
    return {**manifests, "config": root / "config"}


def run(shapes, output_dir, **training_overrides) -> ClipVipTrainer:
    model_args = ModelArguments(config_name=str(shapes["config"]), build_tokenizer_from_data=True)
    data_args = DataArguments(
        train_file=[str(shapes["train"])], eval_file=[str(shapes["test"])], num_frames=4, max_text_length=16, num_parts=2
    )
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=32, learning_rate=5e-4, warmup_steps=10,
        weight_decay=0.05, ocl="v-s", report_to="none", logging_steps=10, dataloader_num_workers=2,
        save_strategy="no", disable_tqdm=True, seed=0,
    )
    return train(model_args, data_args, ClipVipTrainingArguments(**{**settings, **training_overrides}))


def test_training_from_random_weights_retrieves_held_out_clips_well_above_chance(shapes, tmp_path):
    trainer = run(shapes, tmp_path / "run", max_steps=200)
    metrics = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    num_videos = metrics["eval_num_videos"]
    chance_r1, chance_medr = 100 / num_videos, (num_videos + 1) / 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"t2v R@1 {metrics['eval_t2v_r1']:.1f}% (chance {chance_r1:.1f}%), MdR {metrics['eval_t2v_medr']} "
          f"(chance {chance_medr}), loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    assert metrics["eval_t2v_r1"] >= 2.5 * chance_r1
    assert metrics["eval_t2v_medr"] <= chance_medr / 2
    assert losses[-1] < losses[0] - 1.0


def test_resume_from_checkpoint_continues_from_the_saved_step(shapes, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1, dataloader_num_workers=0)
    run(shapes, tmp_path / "full", **settings)
    resumed = run(shapes, tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"), **settings)
    assert resumed.state.global_step == 6
    # The checkpoint's history (steps 1-3) followed by the three steps run after resuming, none repeated.
    logged_steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert logged_steps == [1, 2, 3, 4, 5, 6]
    final = load_file(tmp_path / "full" / "model.safetensors")
    for name, tensor in load_file(tmp_path / "resumed" / "model.safetensors").items():
        torch.testing.assert_close(tensor, final[name], atol=1e-5, rtol=1e-4, msg=name)


def test_train_and_evaluate_commands_save_a_folder_that_loads_in_a_fresh_process(shapes, tmp_path):
    model_dir, eval_dir = tmp_path / "model", tmp_path / "eval"
    clip_vip([
        "train", "--config_name", str(shapes["config"]), "--build_tokenizer_from_data",
        "--train_file", str(shapes["train"]), "--eval_file", str(shapes["test"]), "--num_frames", "4",
        "--max_text_length", "16", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--output_dir", str(model_dir), "--report_to", "none", "--ocl", "v-sc,f-c", "--save_strategy", "no",
    ])
    clip_vip(["evaluate", "--model_dir", str(model_dir), "--test_file", str(shapes["test"]),
              "--output_dir", str(eval_dir), "--num_frames", "4", "--dsl"])
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert {"test_t2v_r1", "test_v2t_medr", "test_dsl_t2v_r1"} <= metrics.keys()
    assert metrics["test_num_videos"] == 42

    script = f"""
import json, torch
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
row = json.loads(open({str(shapes["test"])!r}).readline())
inputs = processor(text=[row["text"]], videos=[{str(shapes["test"].parent)!r} + "/" + row["video"]], num_frames=4)
with torch.no_grad():
    out = model(**inputs)
print(type(model).__name__, type(processor).__name__, tuple(inputs["pixel_values"].shape), out.logits_per_video.shape)
"""
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=offline_env(),
                               capture_output=True, text=True, check=True)
    assert "ClipVipModel ClipVipProcessor (1, 4, 3, 32, 32) torch.Size([1, 1])" in completed.stdout
