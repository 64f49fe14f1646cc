"""ClipVipTrainer: synchronised multi-process steps, the logit-scale clamp, encoders, and the batch contract."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from training.losses import ocl_loss
from training.trainer import ClampLogitScaleCallback, encode_sources, encode_video

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "dist_scripts" / "trainer_step_worker.py"


def run_trainer_step(output_dir: Path, num_processes: int, ocl: str, local_loss: bool) -> list[dict[str, torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
        str(WORKER), str(output_dir), ocl, "1" if local_loss else "0",
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [load_file(output_dir / f"world{num_processes}_rank{rank}.safetensors") for rank in range(num_processes)]


@pytest.fixture(scope="module")
def single_process_step(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    output_dir = tmp_path_factory.mktemp("single_process_step")
    (single,) = run_trainer_step(output_dir, 1, "v-sc,f-c", local_loss=False)
    return single, load_file(output_dir / "initial.safetensors")


@pytest.mark.parametrize("local_loss", [False, True], ids=["gathered", "local"])
def test_two_process_step_equals_a_single_process_step_on_the_concatenated_batch(
    tmp_path, local_loss, single_process_step
):
    single, initial = single_process_step
    first, second = run_trainer_step(tmp_path, 2, "v-sc,f-c", local_loss)
    assert all(not torch.equal(single[name], initial[name]) for name in ("logit_scale", "visual_projection.weight",
               "text_projection.weight", "vision_model.embeddings.proxy_embedding"))
    for name in single:
        assert torch.equal(first[name], second[name]), f"{name} differs between the processes: unsynchronised"
        # Same SGD update up to float summation order (a scaling or synchronisation bug moves it by >= 50%).
        update, single_update = first[name] - initial[name], single[name] - initial[name]
        tolerance = 1e-4 * single_update.abs().max().item() + 1e-7
        torch.testing.assert_close(update, single_update, atol=tolerance, rtol=0, msg=name)


def test_logit_scale_is_clamped_into_zero_to_ln_200_after_each_step(tiny_config):
    model = ClipVipModel(tiny_config)
    callback = ClampLogitScaleCallback()
    for value, expected in ((7.0, math.log(200)), (-1.0, 0.0), (3.0, 3.0)):
        with torch.no_grad():
            model.logit_scale.fill_(value)
        callback.on_optimizer_step(None, None, None, model=model)
        assert model.logit_scale.item() == pytest.approx(expected)


def test_mean_frames_averages_normalised_frame_features(tiny_config):
    torch.manual_seed(0)
    model = ClipVipModel(tiny_config).eval()
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        pooled = encode_video(model, video, "mean_frames")
        per_frame = torch.stack([model(pixel_values=video[:, t : t + 1]).video_embeds for t in range(3)], dim=1)
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(per_frame.mean(dim=1), dim=-1))


def test_sources_are_encoded_like_the_model_encodes_them(tiny_config):
    torch.manual_seed(0)
    model = ClipVipModel(tiny_config).eval()
    inputs = {
        "pixel_values": torch.randn(2, 4, 3, 64, 64),
        "frame_pixel_values": torch.randn(2, 1, 3, 64, 64),
        "input_ids": torch.tensor([[1, 5, 999, 0], [1, 999, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "caption_input_ids": torch.tensor([[1, 7, 8, 999, 0, 0], [1, 9, 999, 0, 0, 0]]),
        "caption_attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
    }
    with torch.no_grad():
        features = encode_sources(model, inputs, {"video", "frame", "text", "caption"})
        expected_caption = model(input_ids=inputs["caption_input_ids"], attention_mask=inputs["caption_attention_mask"])
        expected_text = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        expected_frame = model(pixel_values=inputs["frame_pixel_values"])
    torch.testing.assert_close(features["caption"], expected_caption.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(features["text"], expected_text.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(features["frame"], expected_frame.video_embeds)
    loss = ocl_loss(features, model.logit_scale, "v-sc,f-c")
    assert torch.isfinite(loss)


def test_a_batch_without_captions_names_the_missing_source(tiny_config):
    model = ClipVipModel(tiny_config).eval()
    inputs = {"pixel_values": torch.randn(2, 4, 3, 64, 64), "input_ids": torch.tensor([[1, 999], [1, 999]])}
    with pytest.raises(KeyError, match=r"needs sources \['caption', 'frame'\]"):
        encode_sources(model, inputs, {"video", "frame", "text", "caption"})


def test_bf16_autocast_gradient_accumulation_and_checkpointing_train_together(tiny_config, tmp_path):
    from dist_scripts.trainer_step_worker import FixedClips
    from training.trainer import ClipVipTrainer, ClipVipTrainingArguments

    tiny_config.vision_config.image_size = 32
    torch.manual_seed(0)
    model = ClipVipModel(tiny_config)
    before = model.vision_model.embeddings.proxy_embedding.detach().clone()
    args = ClipVipTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        bf16=True, use_cpu=True, activation_checkpointing=True, report_to="none", save_strategy="no",
        remove_unused_columns=False, logging_steps=1, learning_rate=1e-3,
    )
    trainer = ClipVipTrainer(model=model, args=args, train_dataset=FixedClips(tiny_config))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert model.vision_model.encoder.layers[0].gradient_checkpointing
    assert not torch.equal(model.vision_model.embeddings.proxy_embedding, before)
    assert 0 <= model.logit_scale.item() <= math.log(200)
