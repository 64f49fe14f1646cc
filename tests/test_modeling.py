"""ClipVipModel behaviour: the attention pattern, backends, outputs, checkpointing, shapes, saving, from_clip."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from conftest import offline_env
from modeling_clip_vip.modeling_clip_vip import ClipVipModel


def tiny_model(config, attn_implementation="sdpa", **vision_overrides) -> ClipVipModel:
    for key, value in vision_overrides.items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    model = ClipVipModel(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def random_video(config, batch=2, frames=None, seed=1) -> torch.Tensor:
    vision = config.vision_config
    generator = torch.Generator().manual_seed(seed)
    frames = frames or vision.num_frames
    return torch.randn(batch, frames, 3, vision.image_size, vision.image_size, generator=generator)


def proxy_mask(num_front: int, num_frames: int, num_patches: int) -> torch.Tensor:
    """The allowed-attention matrix of SPEC §1, written directly: `mask[query, key]`."""
    length = num_front + num_frames * num_patches
    allowed = torch.zeros(length, length, dtype=torch.bool)
    allowed[:num_front] = True
    for query in range(num_front, length):
        frame = (query - num_front) // num_patches
        allowed[query, :num_front] = True
        start = num_front + frame * num_patches
        allowed[query, start : start + num_patches] = True
    return allowed


def dense_masked_vision_encoder(model: ClipVipModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """A slow reference: every layer as one dense `(N, N)` attention with the proxy mask."""
    vision = model.vision_model
    embeddings = vision.embeddings
    hidden = vision.pre_layrnorm(embeddings(pixel_values))
    front = 1 + model.config.vision_config.num_proxies
    allowed = proxy_mask(front, pixel_values.shape[1], embeddings.num_patches)
    for layer in vision.encoder.layers:
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        heads = lambda states: states.unflatten(-1, (attention.num_heads, attention.head_dim)).transpose(1, 2)  # noqa: E731
        queries, keys, values = heads(attention.q_proj(normed)), heads(attention.k_proj(normed)), heads(attention.v_proj(normed))
        scores = (queries @ keys.transpose(-1, -2)) * attention.scale
        probabilities = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        attended = (probabilities @ values).transpose(1, 2).flatten(2)
        hidden = hidden + attention.out_proj(attended)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return hidden


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_blockwise_attention_equals_dense_masked_attention(tiny_config, attn_implementation):
    model = tiny_model(tiny_config, attn_implementation)
    pixel_values = random_video(tiny_config)
    with torch.no_grad():
        ours = model.vision_model(pixel_values).last_hidden_state
        reference = dense_masked_vision_encoder(model, pixel_values)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)


def outputs_before_and_after_changing_frame_1(config, attention_pattern: str):
    """A one-layer model's front-token and frame-0 outputs, for a video and for it with frame 1 changed."""
    model = tiny_model(config, num_hidden_layers=1, attention_pattern=attention_pattern)
    video = random_video(config)
    changed = video.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        before = model.vision_model(video).last_hidden_state
        after = model.vision_model(changed).last_hidden_state
    front, patches = 1 + config.vision_config.num_proxies, model.vision_model.embeddings.num_patches
    frame0 = slice(front, front + patches)
    return (before[:, :front], after[:, :front]), (before[:, frame0], after[:, frame0])


def test_patch_tokens_see_only_their_frame(tiny_config):
    (front_before, front_after), (frame0_before, frame0_after) = outputs_before_and_after_changing_frame_1(
        tiny_config, "proxy"
    )
    torch.testing.assert_close(frame0_after, frame0_before, atol=0, rtol=0)
    assert (front_after - front_before).abs().max() > 1e-3, "front tokens must see every frame"


def test_full_attention_pattern_lets_patches_see_other_frames(tiny_config):
    _, (frame0_before, frame0_after) = outputs_before_and_after_changing_frame_1(tiny_config, "full")
    assert (frame0_after - frame0_before).abs().max() > 1e-3


def test_eager_attentions_are_dense_with_zeros_where_attention_is_not_allowed(tiny_config):
    model = tiny_model(tiny_config, "eager")
    video = random_video(tiny_config, frames=3)
    with torch.no_grad():
        outputs = model.vision_model(video, output_attentions=True)
    front, patches = 1 + tiny_config.vision_config.num_proxies, model.vision_model.embeddings.num_patches
    length = front + 3 * patches
    allowed = proxy_mask(front, 3, patches)
    assert len(outputs.attentions) == tiny_config.vision_config.num_hidden_layers
    for weights in outputs.attentions:
        assert weights.shape == (2, tiny_config.vision_config.num_attention_heads, length, length)
        assert torch.all(weights[..., ~allowed] == 0)
        assert torch.all(weights[..., allowed] > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_sdpa_returns_no_attention_weights_and_warns(tiny_config):
    model = tiny_model(tiny_config, "sdpa")
    logging.warning_once.cache_clear()
    with CaptureLogger(logging.get_logger("modeling_clip_vip.modeling_clip_vip")) as captured:
        with torch.no_grad():
            outputs = model.vision_model(random_video(tiny_config), output_attentions=True)
    assert all(weights is None for weights in outputs.attentions)
    assert "attn_implementation='eager'" in captured.out


def test_switching_attn_implementation_switches_the_code_path(tiny_config, monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    model = tiny_model(tiny_config, "sdpa")
    video, input_ids = random_video(tiny_config), torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        sdpa_outputs = model(input_ids=input_ids, pixel_values=video)
    assert calls, "sdpa must go through torch's scaled_dot_product_attention"
    calls.clear()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager_outputs = model(input_ids=input_ids, pixel_values=video)
    assert not calls, "eager must not call scaled_dot_product_attention"
    torch.testing.assert_close(eager_outputs.logits_per_video, sdpa_outputs.logits_per_video, atol=1e-4, rtol=1e-5)


def test_hidden_states_cover_every_layer_and_disable_the_shortcut(tiny_config):
    model = tiny_model(tiny_config)
    video = random_video(tiny_config)
    with torch.no_grad():
        outputs = model(input_ids=torch.randint(0, 1000, (2, 8)), pixel_values=video, output_hidden_states=True)
    vision = outputs.vision_model_output
    length = 1 + tiny_config.vision_config.num_proxies + tiny_config.vision_config.num_frames * 16
    assert len(vision.hidden_states) == tiny_config.vision_config.num_hidden_layers + 1
    assert all(state.shape == (2, length, 64) for state in vision.hidden_states)
    assert vision.last_hidden_state.shape == (2, length, 64)
    assert len(outputs.text_model_output.hidden_states) == tiny_config.text_config.num_hidden_layers + 1


def test_pooled_shortcut_is_bit_identical_to_the_full_path(tiny_config):
    model = tiny_model(tiny_config)
    video = random_video(tiny_config)
    with torch.no_grad():
        shortcut = model.get_video_features(video)
        full = model.vision_model(video, pooled_only=False)
    front = 1 + tiny_config.vision_config.num_proxies
    assert shortcut.last_hidden_state.shape[1] == front
    assert torch.equal(shortcut.pooler_output, model.visual_projection(full.pooler_output))
    assert torch.equal(shortcut.last_hidden_state, full.last_hidden_state[:, :front])


def test_activation_checkpointing_gives_the_same_gradients(tiny_config):
    video, input_ids = random_video(tiny_config), torch.randint(0, 1000, (2, 8))

    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = tiny_model(tiny_config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        norm_calls = []
        model.vision_model.encoder.layers[0].self_attn.register_forward_hook(lambda *_: norm_calls.append(1))
        model(input_ids=input_ids, pixel_values=video, return_loss=True).loss.backward()
        grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
        return grads, len(norm_calls)

    (plain, plain_calls), (checkpointed, checkpointed_calls) = gradients(False), gradients(True)
    assert (plain_calls, checkpointed_calls) == (1, 2), "checkpointing must recompute the layer in backward"
    assert plain.keys() == checkpointed.keys() and "vision_model.embeddings.proxy_embedding" in plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=0, rtol=0, msg=name)


def test_forward_loss_is_the_mean_of_both_directions(tiny_config):
    model = tiny_model(tiny_config)
    with torch.no_grad():
        outputs = model(input_ids=torch.randint(0, 1000, (2, 8)), pixel_values=random_video(tiny_config), return_loss=True)
    targets = torch.arange(2)
    expected = (
        torch.nn.functional.cross_entropy(outputs.logits_per_text, targets)
        + torch.nn.functional.cross_entropy(outputs.logits_per_video, targets)
    ) / 2
    torch.testing.assert_close(outputs.loss, expected)
    torch.testing.assert_close(outputs.logits_per_video, outputs.logits_per_text.t())


@pytest.mark.parametrize(
    "method, shape, message",
    [
        ("get_video_features", (2, 3, 64, 64), "video batch of shape (batch, frames, 3, 64, 64)"),
        ("get_video_features", (2, 4, 3, 56, 56), "(batch, frames, 3, 64, 64), got (2, 4, 3, 56, 56)"),
        ("get_video_features", (2, 4, 1, 64, 64), "got (2, 4, 1, 64, 64)"),
        ("get_image_features", (2, 4, 3, 64, 64), "image batch of shape (batch, channels, height, width)"),
    ],
)
def test_wrong_pixel_shapes_say_what_was_expected(tiny_config, method, shape, message):
    model = tiny_model(tiny_config)
    with pytest.raises(ValueError) as error:
        getattr(model, method)(torch.zeros(shape))
    assert message in str(error.value)


def test_too_long_text_says_how_many_positions_there_are(tiny_config):
    model = tiny_model(tiny_config)
    with pytest.raises(ValueError, match="32 positions"):
        model.get_text_features(torch.ones(1, 40, dtype=torch.long))


def test_save_and_load_in_a_fresh_offline_process_gives_identical_outputs(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    model.save_pretrained(tmp_path / "model")
    video, input_ids = random_video(tiny_config), torch.randint(0, 1000, (2, 8))
    torch.save({"video": video, "input_ids": input_ids}, tmp_path / "inputs.pt")
    script = f"""
import torch
from transformers import AutoConfig, AutoModel
config = AutoConfig.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert type(model).__name__ == "ClipVipModel" and config.vision_config.num_proxies == {tiny_config.vision_config.num_proxies}
inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
with torch.no_grad():
    out = model(input_ids=inputs["input_ids"], pixel_values=inputs["video"])
torch.save(out.logits_per_video, {str(tmp_path / "logits.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=offline_env())
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=video).logits_per_video
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), expected)
    assert "proxy_embedding" in "".join(load_file(tmp_path / "model" / "model.safetensors"))


def random_clip(eos_token_id: int) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, bos_token_id=98, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval()


def test_from_clip_without_proxies_or_time_reproduces_clip_features():
    clip = random_clip(eos_token_id=99)
    model = ClipVipModel.from_clip(clip, num_proxies=0, num_frames=1, use_temporal_embedding=False)
    images = torch.randn(3, 3, 32, 32)
    input_ids = torch.tensor([[98, 5, 6, 99, 99], [98, 7, 99, 99, 99]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(images).pooler_output, clip.get_image_features(images).pooler_output,
            atol=1e-5, rtol=1e-5,
        )
        torch.testing.assert_close(
            model.get_text_features(input_ids).pooler_output, clip.get_text_features(input_ids).pooler_output,
            atol=0, rtol=0,
        )


def test_from_clip_copies_every_clip_tensor_and_initialises_only_the_new_ones():
    clip = random_clip(eos_token_id=99)
    model = ClipVipModel.from_clip(clip, num_proxies=3, num_frames=8)
    ours, theirs = model.state_dict(), clip.state_dict()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    assert set(ours) - set(theirs) == {
        "vision_model.embeddings.proxy_embedding",
        "vision_model.embeddings.temporal_embedding",
    }
    class_embedding = theirs["vision_model.embeddings.class_embedding"]
    assert torch.equal(ours["vision_model.embeddings.proxy_embedding"], class_embedding.expand(3, -1))
    assert torch.count_nonzero(ours["vision_model.embeddings.temporal_embedding"]) == 0


def test_forward_encodes_one_modality_when_the_other_is_absent(tiny_config):
    model = tiny_model(tiny_config)
    video, input_ids = random_video(tiny_config), torch.randint(0, 1000, (3, 8))
    with torch.no_grad():
        both = model(input_ids=input_ids, pixel_values=video)
        video_only = model(pixel_values=video)
        text_only = model(input_ids=input_ids)
    assert video_only.logits_per_video is None and video_only.text_embeds is None
    assert torch.equal(video_only.video_embeds, both.video_embeds)
    assert torch.equal(text_only.text_embeds, both.text_embeds)
    with pytest.raises(ValueError, match="needs input_ids, pixel_values or both"):
        model()
