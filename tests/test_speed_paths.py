"""The speed and memory paths give the numbers of the plain ones: fused quick_gelu, the pooled-only shortcut."""

import torch
from transformers.activations import QuickGELUActivation
from transformers.models.clip.modeling_clip import CLIPMLP

from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from modeling_clip_vip.modeling_clip_vip import (
    FUSED_ACTIVATION_MIN_ELEMENTS,
    ClipVipModel,
    ClipVipMLP,
    ClipVipQuickGELU,
)


def activation_and_gradient(activation: torch.nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor):
    inputs = inputs.clone().requires_grad_()
    output = activation(inputs)
    output.backward(grad_output)
    return output.detach(), inputs.grad


def test_fused_quick_gelu_gives_the_bits_of_transformers_quick_gelu_both_ways():
    generator = torch.Generator().manual_seed(0)
    # The small tensor runs the eager kernels, the large one (an odd size: vector tails) the compiled ones.
    for numel in (1000, FUSED_ACTIVATION_MIN_ELEMENTS + 13):
        inputs = 4 * torch.randn(numel, generator=generator)
        grad_output = torch.randn(numel, generator=generator)
        fused = activation_and_gradient(ClipVipQuickGELU(), inputs, grad_output)
        reference = activation_and_gradient(QuickGELUActivation(), inputs, grad_output)
        assert torch.equal(fused[0], reference[0]), f"forward differs at {numel} elements"
        assert torch.equal(fused[1], reference[1]), f"gradient differs at {numel} elements"


def test_mlp_keeps_less_for_backward_than_clips(tiny_config):
    config = tiny_config.vision_config
    ours, clips = ClipVipMLP(config), CLIPMLP(config)
    inputs = torch.randn(2, 10, config.hidden_size, requires_grad=True)

    def saved_bytes(mlp: torch.nn.Module) -> int:
        """Bytes of the distinct tensors autograd keeps for backward."""
        sizes = {}

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            sizes[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            mlp(inputs)
        return sum(sizes.values())

    # CLIP's quick_gelu keeps its input and its sigmoid; ours keeps the input only.
    one_activation = 2 * 10 * config.intermediate_size * 4
    assert saved_bytes(clips) - saved_bytes(ours) == one_activation


def b32_shaped_model(num_layers: int = 2) -> ClipVipModel:
    """The real B/32 widths, image size, patches and frames (so matrix multiplies have their real shapes)."""
    config = ClipVipConfig(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                       "num_hidden_layers": num_layers, "image_size": 224, "patch_size": 32, "num_frames": 12},
        text_config={"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                     "num_hidden_layers": 1, "max_position_embeddings": 32},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = ClipVipModel(config)
    model.set_attn_implementation("sdpa")
    return model


def test_pooled_shortcut_is_bit_identical_at_the_real_b32_shapes():
    model = b32_shaped_model().eval()
    video = torch.randn(2, 12, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shortcut = model.get_video_features(video)
        full = model.vision_model(video, pooled_only=False)
    assert torch.equal(shortcut.pooler_output, model.visual_projection(full.pooler_output))
    assert torch.equal(shortcut.last_hidden_state, full.last_hidden_state[:, :4])


def test_training_through_the_shortcut_gives_the_gradients_of_the_full_path():
    model = b32_shaped_model().train()
    video = torch.randn(2, 12, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    input_ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(2))

    def gradients(output_hidden_states: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        outputs = model(
            input_ids=input_ids, pixel_values=video, return_loss=True, output_hidden_states=output_hidden_states
        )
        assert outputs.vision_model_output.last_hidden_state.shape[1] == (4 + 12 * 49 if output_hidden_states else 4)
        outputs.loss.backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}

    shortcut, full = gradients(False), gradients(True)
    assert shortcut.keys() == full.keys()
    for name in full:
        assert torch.equal(shortcut[name], full[name]), name
