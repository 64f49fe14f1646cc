"""Parity with the authors' code: every output of the official tiny fixture, converted through our converter."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import OFFICIAL_TINY_DIR, offline_env
from modeling_clip_vip.convert_clip_vip_original_to_hf import convert_original_checkpoint, load_config

ATOL = 1e-5
pytestmark = pytest.mark.skipif(not OFFICIAL_TINY_DIR.is_dir(), reason="shared/fixtures/clipvip_official_tiny missing")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(OFFICIAL_TINY_DIR / "io.safetensors")


def load_official_tiny(attn_implementation: str):
    model = convert_original_checkpoint(OFFICIAL_TINY_DIR / "official_tiny.pt", load_config(OFFICIAL_TINY_DIR / "config.json"))
    model.set_attn_implementation(attn_implementation)
    return model


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tolerance = ATOL * max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tolerance, f"{name}: max abs diff {diff:.3g} > {tolerance:.3g}"


def official_outputs(model, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our values for every output the fixture lists, under the fixture's names."""
    normalize = torch.nn.functional.normalize
    outputs = {}
    with torch.no_grad():
        for frames in ("T12", "T8", "T1"):
            pixel_values = reference[f"pixel_values_{frames}"]
            video = model.vision_model(pixel_values)
            outputs[f"image_features_{frames}"] = normalize(model.get_video_features(pixel_values).pooler_output, dim=-1)
            outputs[f"vision_pooled_{frames}"] = video.pooler_output
            outputs[f"vision_embeddings_{frames}"] = model.vision_model.embeddings(pixel_values)
            if frames == "T12":
                outputs["vision_last_hidden_T12"] = video.last_hidden_state
        text = model.text_model(reference["input_ids"], reference["attention_mask"])
        outputs["text_pooled"] = text.pooler_output
        outputs["text_last_hidden"] = text.last_hidden_state
        for suffix, mask in (("", "attention_mask"), ("_probe", "attention_mask_probe")):
            features = model.get_text_features(reference["input_ids"], reference[mask]).pooler_output
            outputs[f"text_features{suffix}"] = normalize(features, dim=-1)
        joint = model(
            input_ids=reference["input_ids"],
            pixel_values=reference["pixel_values_T12"],
            attention_mask=reference["attention_mask"],
        )
        outputs["logits_per_text_T12"] = joint.logits_per_text
        outputs["logits_per_image_T12"] = joint.logits_per_video
        outputs["logit_scale"] = model.logit_scale.detach()
    return outputs


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_every_fixture_output_matches_the_authors_code(attn_implementation, reference):
    torch.set_num_threads(1)
    try:
        outputs = official_outputs(load_official_tiny(attn_implementation), reference)
    finally:
        torch.set_num_threads(2)
    expected_names = {name for name in reference if not name.startswith(("pixel_values", "input_ids", "attention_mask"))}
    assert set(outputs) == expected_names
    for name, value in outputs.items():
        assert_close(value, reference[name], f"{attn_implementation}/{name}")


def test_converter_command_writes_a_folder_that_loads_offline_in_a_fresh_process(tmp_path, reference, tokenizer):
    output_dir = tmp_path / "converted"
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    subprocess.run(
        [
            sys.executable, "-m", "modeling_clip_vip.convert_clip_vip_original_to_hf",
            "--checkpoint", str(OFFICIAL_TINY_DIR / "official_tiny.pt"),
            "--config", str(OFFICIAL_TINY_DIR / "config.json"),
            "--output", str(output_dir),
            "--tokenizer", str(tmp_path / "tokenizer"),
        ],
        check=True,
    )
    assert {"config.json", "model.safetensors", "modeling_clip_vip.py", "configuration_clip_vip.py",
            "processing_clip_vip.py", "processor_config.json", "tokenizer.json"} <= {
        path.name for path in output_dir.iterdir()
    }
    script = f"""
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoProcessor
processor = AutoProcessor.from_pretrained({str(output_dir)!r}, trust_remote_code=True)
assert processor.image_processor.size == {{"height": 64, "width": 64}}, processor.image_processor.size
config = AutoConfig.from_pretrained({str(output_dir)!r}, trust_remote_code=True)
assert config.model_type == "clip_vip", config.model_type
model = AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()
io = load_file({str(OFFICIAL_TINY_DIR / "io.safetensors")!r})
with torch.no_grad():
    out = model(input_ids=io["input_ids"], pixel_values=io["pixel_values_T12"], attention_mask=io["attention_mask"])
save_file({{"logits_per_text": out.logits_per_text.contiguous(), "video_embeds": out.video_embeds.contiguous()}},
          {str(tmp_path / "fresh.safetensors")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=offline_env())
    fresh = load_file(tmp_path / "fresh.safetensors")
    assert_close(fresh["logits_per_text"], reference["logits_per_text_T12"], "fresh process logits_per_text")
    assert_close(fresh["video_embeds"], reference["image_features_T12"], "fresh process video_embeds")

