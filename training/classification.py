"""Zero-shot video classification: label names become prompts, prompts become text embeddings, and each video
is scored against them as CLIP does, a softmax over its scaled cosine similarities to the labels.

`classify_videos` works on a loaded model and processor; `classify_files` is what `clip-vip classify` does
with a model folder and video files.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from modeling_clip_vip.processing_clip_vip import ClipVipProcessor

DEFAULT_TEMPLATE = "a video of {}."


@dataclass
class ClassifyArguments:
    """`clip-vip classify` options."""

    model_dir: str = field(metadata={"help": "A saved ClipVipModel folder with its processor."})
    video: list[str] = field(metadata={"help": "The video file(s) to classify."})
    labels: str | None = field(default=None, metadata={"help": "Comma-separated label names, e.g. 'cat,dog'."})
    labels_file: str | None = field(default=None, metadata={"help": "A text file with one label name a line."})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "Prompt template; '{}' is the label."})
    batch_size: int = 8
    output_file: str | None = field(default=None, metadata={"help": "Also write the scores here as JSON."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})


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


def load_for_inference(model_dir: str | Path, device: str | None = None) -> tuple[ClipVipModel, ClipVipProcessor]:
    """A saved `ClipVipModel` in eval mode on `device` (cuda when available by default), and its processor."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ClipVipModel.from_pretrained(model_dir).to(device).eval()
    return model, ClipVipProcessor.from_pretrained(model_dir)


def read_labels(labels: str | None = None, labels_file: str | Path | None = None) -> list[str]:
    """Label names from a comma-separated string or a file with one a line (exactly one of the two)."""
    if (labels is None) == (labels_file is None):
        raise ValueError("give the labels either as a comma-separated list or as a file, not both or neither")
    text = labels if labels is not None else Path(labels_file).read_text(encoding="utf-8")
    names = [name.strip() for name in (text.split(",") if labels is not None else text.splitlines())]
    names = [name for name in names if name]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"labels must be distinct; repeated: {duplicates}")
    if not names:
        raise ValueError("no label names given")
    return names


def classify_files(args: ClassifyArguments) -> list[dict[str, Any]]:
    """Zero-shot scores of each of `args.video` against the labels: one `{"video", "label", "scores"}` a video,
    `scores` mapping each label (in the order given) to its probability. Written to `args.output_file` if set."""
    labels = read_labels(args.labels, args.labels_file)
    model, processor = load_for_inference(args.model_dir, args.device)
    scores = classify_videos(model, processor, args.video, labels, args.template, args.batch_size).cpu()
    results = [
        {"video": video, "label": labels[int(row.argmax())], "scores": dict(zip(labels, row.tolist()))}
        for video, row in zip(args.video, scores)
    ]
    if args.output_file:
        report = {"labels": labels, "template": args.template, "results": results}
        Path(args.output_file).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return results
