"""Zero-shot video classification: label names become prompts, prompts become text embeddings, and each video
is scored against them as CLIP does, a softmax over its scaled cosine similarities to the labels."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATE = "a video of {}."


def build_prompts(labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per label, in label order: `template` with the label in place of `{}`."""
    if "{}" not in template:
        raise ValueError(f"the prompt template must contain '{{}}' where the label goes, got {template!r}")
    if len(labels) == 0:
        raise ValueError("zero-shot classification needs at least one label")
    return [template.format(label) for label in labels]


def zero_shot_scores(
    video_features: torch.Tensor, label_text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Probability of each label for each video.

    Args:
        video_features: `(B, D)` or `(D,)` video embeddings (normalised here).
        label_text_features: `(L, D)` embeddings of the label prompts (normalised here).
        logit_scale: the model's `logit_scale`, the log of the factor scaling cosine similarities.

    Returns:
        `(B, L)` probabilities (`B = 1` for a single video), each row summing to one, columns in label order.
    """
    if video_features.dim() == 1:
        video_features = video_features[None]
    if video_features.dim() != 2 or label_text_features.dim() != 2:
        raise ValueError(
            f"expected video features (B, D) or (D,) and label features (L, D), got "
            f"{tuple(video_features.shape)} and {tuple(label_text_features.shape)}"
        )
    if video_features.shape[1] != label_text_features.shape[1]:
        raise ValueError(
            f"video features have dimension {video_features.shape[1]}, label features {label_text_features.shape[1]}"
        )
    scale = torch.as_tensor(logit_scale, dtype=video_features.dtype, device=video_features.device).exp()
    similarity = F.normalize(video_features, dim=-1) @ F.normalize(label_text_features, dim=-1).t()
    return (scale * similarity).softmax(dim=-1)


@torch.no_grad()
def embed_texts(model: Any, processor: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """`(N, projection_dim)` unnormalised text embeddings of `texts` from a `ClipVipModel` and its processor."""
    device = next(model.parameters()).device
    batches = []
    for start in range(0, len(texts), batch_size):
        inputs = processor(text=list(texts[start : start + batch_size]), return_tensors="pt").to(device)
        outputs = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        batches.append(outputs.pooler_output)
    return torch.cat(batches)


@torch.no_grad()
def embed_videos(model: Any, processor: Any, videos: Sequence[Any], batch_size: int = 8) -> torch.Tensor:
    """`(N, projection_dim)` unnormalised video embeddings; videos are anything the processor takes (paths,
    bytes, decoded `(T, H, W, 3)` frames)."""
    device = next(model.parameters()).device
    batches = []
    for start in range(0, len(videos), batch_size):
        pixel_values = processor(videos=list(videos[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        batches.append(model.get_video_features(pixel_values=pixel_values.to(device)).pooler_output)
    return torch.cat(batches)


def classify_videos(
    model: Any,
    processor: Any,
    videos: Sequence[Any],
    labels: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 8,
) -> torch.Tensor:
    """`(len(videos), len(labels))` zero-shot label probabilities of each video, columns in label order."""
    model.eval()
    label_features = embed_texts(model, processor, build_prompts(labels, template))
    video_features = embed_videos(model, processor, videos, batch_size)
    return zero_shot_scores(video_features, label_features, model.logit_scale.detach())
