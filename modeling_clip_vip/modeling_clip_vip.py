"""PyTorch CLIP-ViP: CLIP with video proxies and proxy-guided attention (Xue et al., ICLR 2023)."""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPMLP,
    CLIPTextEmbeddings,
    eager_attention_forward,
)
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_clip_vip import ClipVipConfig, ClipVipTextConfig, ClipVipVisionConfig, architecture_fields

logger = logging.get_logger(__name__)


@dataclass
class ClipVipOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Symmetric contrastive loss (mean of video-to-text and text-to-video cross-entropy).
    logits_per_video (`torch.FloatTensor` of shape `(video_batch_size, text_batch_size)`):
        `exp(logit_scale)` times the cosine similarity of every video with every text.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, video_batch_size)`):
        The transpose of `logits_per_video`.
    video_embeds (`torch.FloatTensor` of shape `(video_batch_size, projection_dim)`):
        L2-normalised projected video embeddings.
    text_embeds (`torch.FloatTensor` of shape `(text_batch_size, projection_dim)`):
        L2-normalised projected text embeddings.
    text_model_output / vision_model_output (`BaseModelOutputWithPooling`):
        The outputs of the text and video towers (`pooler_output` projected, not normalised).
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Mean of text-to-video and video-to-text cross-entropy for a square `(B, B)` logit matrix."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    text_loss = nn.functional.cross_entropy(logits_per_text, targets)
    video_loss = nn.functional.cross_entropy(logits_per_text.t(), targets)
    return (text_loss + video_loss) / 2.0


class ClipVipVisionEmbeddings(nn.Module):
    """Patch, temporal and spatial embeddings of every frame, behind the class token and the video proxies."""

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.num_positions = self.num_patches + 1

        self.class_embedding = nn.Parameter(torch.randn(self.embed_dim))
        self.proxy_embedding = nn.Parameter(torch.randn(config.num_proxies, self.embed_dim))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_frames, self.embed_dim))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self.position_ids = nn.Buffer(torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def temporal_table(self, num_frames: int) -> torch.Tensor:
        """The temporal table `(1, num_frames, D)`, linearly interpolated when `num_frames` differs from the config."""
        table = self.temporal_embedding
        if num_frames == table.shape[1]:
            return table
        resized = nn.functional.interpolate(table.transpose(1, 2), size=num_frames, mode="linear")
        return resized.transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, T, C, H, W)` -> `(B, M + T*L, D)`, tokens ordered `[class, proxies, frame 0 patches, ...]`."""
        batch_size, num_frames = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1).to(dtype=self.patch_embedding.weight.dtype)
        patches = self.patch_embedding(frames).flatten(2).transpose(1, 2)
        patches = patches.reshape(batch_size, num_frames, self.num_patches, self.embed_dim)

        positions = self.position_embedding(self.position_ids)[0]
        if self.config.use_temporal_embedding:
            patches = patches + self.temporal_table(num_frames).unsqueeze(2)
        patches = patches + positions[1:]

        front = torch.cat([self.class_embedding.unsqueeze(0), self.proxy_embedding], dim=0) + positions[:1]
        front = front.unsqueeze(0).expand(batch_size, -1, -1)
        return torch.cat([front, patches.flatten(1, 2)], dim=1)


def quick_gelu(inputs: torch.Tensor) -> torch.Tensor:
    """CLIP's activation, `x * sigmoid(1.702 x)`, written exactly as transformers' `QuickGELUActivation`."""
    return inputs * torch.sigmoid(1.702 * inputs)


def quick_gelu_backward(grad_output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The input gradient of [`quick_gelu`], term by term as autograd computes it (so the numbers are the same)."""
    sigmoid = torch.sigmoid(1.702 * inputs)
    return grad_output * sigmoid + grad_output * inputs * (1 - sigmoid) * sigmoid * 1.702


# quick_gelu's element-wise passes are memory bound: compiled, each kernel is one pass over the data. Only float32
# CPU tensors this large use the compiled kernels (compiling costs seconds, and on these Inductor gives the same
# bits as the eager kernels); `CLIP_VIP_FUSED_ACTIVATION=0` turns them off.
FUSED_ACTIVATION_MIN_ELEMENTS = 1 << 20
_compiled_kernels: dict[Callable, Callable | None] = {}


def run_fused(kernel: Callable, *tensors: torch.Tensor) -> torch.Tensor:
    """`kernel(*tensors)`, through `torch.compile` for large float32 CPU tensors; eager if compiling fails."""
    first = tensors[0]
    if (
        os.environ.get("CLIP_VIP_FUSED_ACTIVATION", "1") == "0"
        or first.numel() < FUSED_ACTIVATION_MIN_ELEMENTS
        or first.device.type != "cpu"
        or first.dtype != torch.float32
        or torch.compiler.is_compiling()
    ):
        return kernel(*tensors)
    if kernel not in _compiled_kernels:
        _compiled_kernels[kernel] = torch.compile(kernel, dynamic=True)
    compiled = _compiled_kernels[kernel]
    if compiled is not None:
        try:
            return compiled(*tensors)
        except Exception as error:  # e.g. no working C++ compiler: the eager kernel gives the same numbers
            logger.warning_once(f"Running quick_gelu eagerly: compiling it failed ({error}).")
            _compiled_kernels[kernel] = None
    return kernel(*tensors)


class ClipVipQuickGeluFunction(torch.autograd.Function):
    """[`quick_gelu`] that saves only its input for backward (the sigmoid is recomputed there)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inputs)
        return run_fused(quick_gelu, inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (inputs,) = ctx.saved_tensors
        return run_fused(quick_gelu_backward, grad_output, inputs)


class ClipVipQuickGELU(nn.Module):
    """quick_gelu with the numbers of transformers' `QuickGELUActivation`, one pass each way and one saved tensor."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return ClipVipQuickGeluFunction.apply(inputs)


class ClipVipMLP(CLIPMLP):
    """CLIP's MLP (fc1, activation, fc2); quick_gelu runs as [`ClipVipQuickGELU`]."""

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__(config)
        if config.hidden_act == "quick_gelu":
            self.activation_fn = ClipVipQuickGELU()


@dataclass
class VideoTokenLayout:
    """How the vision sequence is laid out: `num_front` front tokens, then `num_frames` blocks of `num_patches`."""

    num_front: int
    num_frames: int
    num_patches: int

    @property
    def length(self) -> int:
        return self.num_front + self.num_frames * self.num_patches


class ClipVipAttention(CLIPAttention):
    """
    CLIP's attention with the proxy-guided pattern: a patch token sees the front tokens and the patches of its own
    frame; a front token sees every token. Computed block-wise: one attention of the `M` front queries over all
    `M + T*L` keys, and `T` attentions (frames folded into the batch) of `L` patch queries over `M + L` keys.
    `attention_pattern="full"` runs one unmasked attention over all tokens instead.

    Front and patch tokens come in, and go through the projections, as two tensors: a front row's numbers then do not
    depend on whether the patch rows are computed (a matrix multiply's rounding depends on how many rows it has), so
    the last layer can skip the patch rows and give the same bits.
    """

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__(config)
        self.full_attention = config.attention_pattern == "full"

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """`(..., N, D)` -> `(..., heads, N, head_dim)`."""
        return states.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _attend(self, queries, keys, values) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries, keys, values `(b, n, heads*d)` -> output `(b, n_q, heads*d)` and weights (eager only)."""
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            self._split_heads(queries),
            self._split_heads(keys),
            self._split_heads(values),
            None,
            scaling=self.scale,
            dropout=0.0 if not self.training else self.dropout,
            is_causal=False,
        )
        return output.flatten(-2), weights

    def forward(
        self,
        front_states: torch.Tensor,
        patch_states: torch.Tensor,
        layout: VideoTokenLayout,
        front_only: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Front tokens `(B, M, D)` and patch tokens `(B, T*L, D)` -> their attention outputs, same shapes. With
        `front_only` only the front queries are computed (keys and values still come from every token) and the
        patch output is `None`. The weights, when `output_attentions` and the backend returns them, are dense
        `(B, heads, N, N)` with zeros where attention is not allowed.
        """
        front = layout.num_front
        front_keys, patch_keys = self.k_proj(front_states), self.k_proj(patch_states)
        front_values, patch_values = self.v_proj(front_states), self.v_proj(patch_states)
        keys, values = torch.cat([front_keys, patch_keys], dim=1), torch.cat([front_values, patch_values], dim=1)
        front_queries = self.q_proj(front_states)
        if front_only:
            front_output, weights = self._attend(front_queries, keys, values)
            return self.out_proj(front_output), None, weights

        patch_queries = self.q_proj(patch_states)
        if self.full_attention:
            output, weights = self._attend(torch.cat([front_queries, patch_queries], dim=1), keys, values)
            return self.out_proj(output[:, :front]), self.out_proj(output[:, front:]), weights

        front_output, front_weights = self._attend(front_queries, keys, values)
        frame_output, frame_weights = self._attend(
            patch_queries.reshape(-1, layout.num_patches, patch_queries.shape[-1]),
            self._frame_context(front_keys, patch_keys, layout),
            self._frame_context(front_values, patch_values, layout),
        )
        patch_output = self.out_proj(frame_output.reshape(patch_queries.shape))

        weights = None
        if output_attentions and front_weights is not None:
            weights = self._dense_weights(front_weights, frame_weights, layout)
        return self.out_proj(front_output), patch_output, weights

    @staticmethod
    def _frame_context(
        front_states: torch.Tensor, patch_states: torch.Tensor, layout: VideoTokenLayout
    ) -> torch.Tensor:
        """
        Front `(B, M, D)` and patch `(B, T*L, D)` keys or values -> what each frame's patches attend to,
        `(B*T, M + L, D)`: the front rows, then the frame's own. One allocation; the front rows are broadcast over
        the frames, not repeated first.
        """
        num_frames = layout.num_frames
        front_states = front_states.unsqueeze(1).expand(-1, num_frames, -1, -1)
        patch_states = patch_states.unflatten(1, (num_frames, layout.num_patches))
        return torch.cat([front_states, patch_states], dim=2).flatten(0, 1)

    @staticmethod
    def _dense_weights(
        front_weights: torch.Tensor, frame_weights: torch.Tensor, layout: VideoTokenLayout
    ) -> torch.Tensor:
        """Scatter block-wise attention probabilities into a dense `(B, heads, N, N)` matrix."""
        batch_size, heads = front_weights.shape[:2]
        front, length, num_patches = layout.num_front, layout.length, layout.num_patches
        dense = front_weights.new_zeros(batch_size, heads, length, length)
        dense[:, :, :front] = front_weights
        frame_weights = frame_weights.unflatten(0, (batch_size, layout.num_frames))
        for frame in range(layout.num_frames):
            rows = slice(front + frame * num_patches, front + (frame + 1) * num_patches)
            dense[:, :, rows, :front] = frame_weights[:, frame, :, :, :front]
            dense[:, :, rows, rows] = frame_weights[:, frame, :, :, front:]
        return dense


class ClipVipEncoderLayer(GradientCheckpointingLayer):
    """
    CLIP's pre-norm block (LN, attention, residual; LN, MLP, residual) with proxy-guided attention, on the front
    tokens and the patch tokens as two tensors.
    """

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__()
        self.self_attn = ClipVipAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipVipMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        front_states: torch.Tensor,
        patch_states: torch.Tensor,
        layout: VideoTokenLayout,
        front_only: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Front `(B, M, D)` and patch `(B, T*L, D)` tokens -> the same after the block, and the attention weights.
        With `front_only` the patch tokens' own queries, `out_proj` and MLP are skipped (their output is `None`).
        """
        front_output, patch_output, weights = self.self_attn(
            self.layer_norm1(front_states),
            self.layer_norm1(patch_states),
            layout,
            front_only=front_only,
            output_attentions=output_attentions,
        )
        front_states = self._residual_mlp(front_output.add_(front_states))
        if patch_output is not None:
            patch_states = self._residual_mlp(patch_output.add_(patch_states))
        return front_states, None if front_only else patch_states, weights

    def _residual_mlp(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The residual sums are formed in place in the sublayers' fresh outputs, which backward does not need.
        return self.mlp(self.layer_norm2(hidden_states)).add_(hidden_states)


class ClipVipVisionEncoder(nn.Module):
    """
    A stack of [`ClipVipEncoderLayer`]. For less memory in training, `model.activation_checkpointing_enable()`
    checkpoints every layer: only each layer's input is kept and the layer is recomputed in backward (about
    -25 to -45% peak memory for +15-35% step time at B/32, 12 frames; the gradients are the same bits).
    """

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([ClipVipEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        layout: VideoTokenLayout,
        pooled_only: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """
        `(B, N, D)` -> `last_hidden_state` `(B, N, D)`. With `pooled_only` (and neither hidden states nor attentions
        requested) the last layer computes the front tokens alone (the patch tokens of the last layer feed nothing)
        and `last_hidden_state` is `(B, M, D)`, with the same bits as the full computation's front rows.
        """
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        front_states, patch_states = hidden_states[:, : layout.num_front], hidden_states[:, layout.num_front :]
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            front_only = pooled_only and index == last and not output_hidden_states and not output_attentions
            front_states, patch_states, weights = layer(
                front_states, patch_states, layout=layout, front_only=front_only, output_attentions=output_attentions
            )
            if output_hidden_states:
                all_hidden_states += (torch.cat([front_states, patch_states], dim=1),)
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = front_states if patch_states is None else torch.cat([front_states, patch_states], dim=1)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class ClipVipPreTrainedModel(PreTrainedModel):
    config: ClipVipConfig
    base_model_prefix = "clip_vip"
    input_modalities = ("video", "image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "ClipVipVisionEmbeddings", "ClipVipEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """CLIP's initialisation, plus the proxies (like the class token) and the temporal table (small normal)."""
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, CLIPTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=factor * 0.02)
            init.normal_(module.position_embedding.weight, std=factor * 0.02)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, ClipVipVisionEmbeddings):
            std = module.config.initializer_range * factor
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.proxy_embedding, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.temporal_embedding, std=std)
            init.normal_(module.patch_embedding.weight, std=std)
            init.normal_(module.position_embedding.weight, std=std)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, CLIPAttention):
            in_std = (module.embed_dim**-0.5) * ((2 * module.config.num_hidden_layers) ** -0.5) * factor
            for projection in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(projection.weight, std=in_std)
            init.normal_(module.out_proj.weight, std=(module.embed_dim**-0.5) * factor)
        elif isinstance(module, CLIPMLP):
            hidden = module.config.hidden_size
            init.normal_(module.fc1.weight, std=(2 * hidden) ** -0.5 * factor)
            init.normal_(module.fc2.weight, std=hidden**-0.5 * ((2 * module.config.num_hidden_layers) ** -0.5) * factor)
        elif isinstance(module, ClipVipModel):
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)


class ClipVipTextModel(ClipVipPreTrainedModel):
    """CLIP's text transformer, pooled at `argmax(input_ids)` (the end-of-text token in CLIP's vocabulary)."""

    config: ClipVipTextConfig
    input_modalities = ("text",)
    _can_record_outputs = {"hidden_states": CLIPEncoderLayer, "attentions": CLIPAttention}

    def __init__(self, config: ClipVipTextConfig):
        super().__init__(config)
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.token_embedding = value

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`input_ids` `(B, S)` -> `last_hidden_state` `(B, S, D)` and `pooler_output` `(B, D)`."""
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must have shape (batch, sequence), got {shape}.")
        max_positions = self.config.max_position_embeddings
        if input_ids.shape[1] > max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens but the model has {max_positions} positions: truncate "
                f"the text (e.g. tokenizer(..., truncation=True, max_length={max_positions}))."
            )
        hidden_states = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        causal_mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, cache=None
        )
        kwargs.pop("is_causal", None)
        encoder_outputs = self.encoder(inputs_embeds=hidden_states, attention_mask=causal_mask, is_causal=True, **kwargs)
        last_hidden_state = self.final_layer_norm(encoder_outputs.last_hidden_state)
        rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
        pooled_output = last_hidden_state[rows, input_ids.to(last_hidden_state.device).argmax(dim=-1)]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


class ClipVipVisionModel(ClipVipPreTrainedModel):
    """The CLIP-ViP video transformer: embeddings, `pre_layrnorm`, encoder, `post_layernorm` of the class token."""

    config: ClipVipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("video", "image")

    def __init__(self, config: ClipVipVisionConfig):
        super().__init__(config)
        self.embeddings = ClipVipVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = ClipVipVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise a `ValueError` naming the expected shape unless `pixel_values` is `(B, T, C, H, W)`."""
        config = self.config
        expected = f"(batch, frames, {config.num_channels}, {config.image_size}, {config.image_size})"
        if pixel_values is None or pixel_values.dim() != 5:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            hint = " (for a batch of images use get_image_features)" if shape is not None and len(shape) == 4 else ""
            raise ValueError(f"pixel_values must be a video batch of shape {expected}, got {shape}{hint}.")
        if tuple(pixel_values.shape[2:]) != (config.num_channels, config.image_size, config.image_size):
            raise ValueError(
                f"pixel_values must have shape {expected}, got {tuple(pixel_values.shape)}: resize frames to "
                f"{config.image_size}x{config.image_size} (a multiple of the patch size {config.patch_size})."
            )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        `pixel_values` `(B, T, C, H, W)` -> `last_hidden_state` `(B, M + T*L, D)` (no post layer norm) and
        `pooler_output` `(B, D)` (post layer norm of the class token). `pooled_only=True` skips the patch tokens
        of the last layer (same pooled output; `last_hidden_state` then holds the `M` front tokens only); it is
        ignored when hidden states or attentions are requested.
        """
        self.check_pixel_values(pixel_values)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if output_attentions and self.config._attn_implementation != "eager":
            logger.warning_once(
                f"Attention weights are only returned with attn_implementation='eager', not "
                f"'{self.config._attn_implementation}'."
            )
        layout = VideoTokenLayout(
            num_front=1 + self.config.num_proxies,
            num_frames=pixel_values.shape[1],
            num_patches=self.embeddings.num_patches,
        )
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        encoder_outputs = self.encoder(
            hidden_states,
            layout,
            pooled_only=pooled_only,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        last_hidden_state = encoder_outputs.last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self.post_layernorm(last_hidden_state[:, 0]),
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


class ClipVipModel(ClipVipPreTrainedModel):
    """
    CLIP-ViP: a video tower ([`ClipVipVisionModel`]) and a text tower ([`ClipVipTextModel`]) projected into one
    embedding space. Parameter names follow transformers' `CLIPModel`, so CLIP checkpoints map onto it.

    Speed and memory, all giving the same numbers:
    - `get_video_features`, `get_image_features` and `forward` without `output_hidden_states`/`output_attentions`
      run the last vision layer for the front tokens only (the pooled output and the gradients are the same bits
      as the full computation's).
    - `model.activation_checkpointing_enable()` keeps only each layer's input in training and recomputes the layer
      in backward: less peak memory for a longer step, the same gradients.
    - quick_gelu runs as one compiled pass for large float32 CPU tensors (`CLIP_VIP_FUSED_ACTIVATION=0` turns
      this off; the first large call compiles, which takes seconds).
    """

    config: ClipVipConfig

    def __init__(self, config: ClipVipConfig):
        super().__init__(config)
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = ClipVipTextModel._from_config(config.text_config)
        self.vision_model = ClipVipVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    @classmethod
    def from_clip(
        cls,
        clip: "str | os.PathLike | CLIPModel",
        num_proxies: int = 3,
        num_frames: int = 12,
        use_temporal_embedding: bool = True,
        attention_pattern: str = "proxy",
    ) -> "ClipVipModel":
        """
        A `ClipVipModel` initialised from a transformers `CLIPModel` (a loaded model, or a path/name for
        `CLIPModel.from_pretrained`). Every CLIP tensor is copied; only the new ones are initialised: each proxy
        starts as a copy of CLIP's class embedding and the temporal table starts at zero, so every proxy begins as
        CLIP's own summary token and no frame is favoured until training says otherwise.
        """
        if not isinstance(clip, CLIPModel):
            clip = CLIPModel.from_pretrained(clip)
        config = ClipVipConfig(
            text_config=architecture_fields(clip.config.text_config.to_dict(), ClipVipTextConfig),
            vision_config={
                **architecture_fields(clip.config.vision_config.to_dict(), ClipVipVisionConfig),
                "num_proxies": num_proxies,
                "num_frames": num_frames,
                "use_temporal_embedding": use_temporal_embedding,
                "attention_pattern": attention_pattern,
            },
            projection_dim=clip.config.projection_dim,
            logit_scale_init_value=float(clip.logit_scale.item()),
        )
        config._attn_implementation = clip.config._attn_implementation
        model = cls(config)
        state_dict = clip.state_dict()
        class_embedding = state_dict["vision_model.embeddings.class_embedding"]
        state_dict["vision_model.embeddings.proxy_embedding"] = class_embedding.expand(num_proxies, -1).clone()
        state_dict["vision_model.embeddings.temporal_embedding"] = torch.zeros_like(
            model.vision_model.embeddings.temporal_embedding
        )
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`input_ids` `(B, S)` -> the text tower's output, `pooler_output` projected `(B, projection_dim)`."""
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)
        return text_outputs

    @can_return_tuple
    def get_video_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """
        `pixel_values` `(B, T, 3, H, W)` -> the video tower's output, `pooler_output` projected
        `(B, projection_dim)` and not normalised. Unless hidden states or attentions are requested, the last layer
        runs for the front tokens only (`last_hidden_state` is then `(B, M, D)`).
        """
        kwargs.setdefault("pooled_only", True)
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)
        return vision_outputs

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """`pixel_values` `(B, 3, H, W)`: each image is a one-frame video; see `get_video_features`."""
        if pixel_values is None or pixel_values.dim() != 4:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(
                f"pixel_values must be an image batch of shape (batch, channels, height, width), got {shape} "
                "(for videos use get_video_features)."
            )
        return self.get_video_features(pixel_values.unsqueeze(1), **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ClipVipOutput:
        """
        `input_ids` `(B_t, S)` and `pixel_values` `(B_v, T, 3, H, W)` -> [`ClipVipOutput`] with
        `logits_per_video` `(B_v, B_t)`. `return_loss=True` adds the symmetric contrastive loss (square batches).
        Either input may be left out to encode one modality only (no logits then): training code encodes every
        source through this forward so that a distributed wrapper sees each call.
        """
        if input_ids is None and pixel_values is None:
            raise ValueError("ClipVipModel.forward needs input_ids, pixel_values or both.")
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        outputs = {"loss": None, "logits_per_video": None, "logits_per_text": None}
        if pixel_values is not None:
            outputs["vision_model_output"] = self.get_video_features(
                pixel_values,
                pooled_only=not output_hidden_states,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
            outputs["video_embeds"] = nn.functional.normalize(outputs["vision_model_output"].pooler_output, dim=-1)
        if input_ids is not None:
            outputs["text_model_output"] = self.get_text_features(
                input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                **kwargs,
            )
            outputs["text_embeds"] = nn.functional.normalize(outputs["text_model_output"].pooler_output, dim=-1)
        if pixel_values is not None and input_ids is not None:
            logits_per_text = outputs["text_embeds"] @ outputs["video_embeds"].t() * self.logit_scale.exp()
            outputs["logits_per_text"], outputs["logits_per_video"] = logits_per_text, logits_per_text.t()
            outputs["loss"] = contrastive_loss(logits_per_text) if return_loss else None
        return ClipVipOutput(**outputs)


ClipVipModel.register_for_auto_class("AutoModel")

__all__ = [
    "ClipVipModel",
    "ClipVipOutput",
    "ClipVipPreTrainedModel",
    "ClipVipTextModel",
    "ClipVipVisionModel",
]
