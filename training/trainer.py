"""`ClipVipTrainer`: OCL (Omnisource Cross-modal Learning) as the `compute_loss` of a transformers `Trainer`.

A batch from `training.data.ClipVipCollator` carries the sources of SPEC §4: the video `V` (`pixel_values`),
its middle frame `F` (`frame_pixel_values`), the original text `S` (`input_ids`) and the auxiliary caption
`C` (`caption_input_ids`). Each source the OCL combination needs is encoded through the forward of the model
the Trainer holds (so a DDP wrapper sees every call and synchronises gradients), gathered over processes with
gradients, and scored by `training.losses.ocl_loss`. After every optimiser step `logit_scale` is clamped into
`[0, ln 200]` as the authors do. Evaluation embeds the whole evaluation set once (each item exactly once, over
all processes) and reports the retrieval metrics of SPEC §6.
"""

import math
from dataclasses import dataclass, field

import torch
from datasets.distributed import split_dataset_by_node
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments

from .data import ClipVipBadSampleTracker
from .distributed import gather_uneven, rank, world_size
from .losses import ocl_loss, required_sources
from .retrieval import retrieval_metrics

MAX_LOGIT_SCALE = math.log(200)
VIDEO_ENCODERS = ("proxy", "mean_frames")
BATCH_BOOKKEEPING = ("num_skipped", "text_video_index")


@dataclass
class ClipVipTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the OCL objective and the video encoder."""

    ocl: str = field(default="v-sc,f-c", metadata={"help": "OCL terms, e.g. 'v-sc,f-c' (post-pretraining) or 'v-s'."})
    ocl_reduction: str = field(default="sum", metadata={"help": "'sum' of the cross-entropies (the authors') or 'mean'."})
    local_loss: bool = field(
        default=False, metadata={"help": "Each process scores only its own rows against all gathered columns."}
    )
    video_encoder: str = field(
        default="proxy",
        metadata={"help": "'proxy': CLIP-ViP; 'mean_frames': every frame as an image, features averaged (CLIP4Clip)."},
    )
    eval_dsl: bool = field(default=False, metadata={"help": "Also report dual-softmax (DSL) retrieval metrics."})
    max_bad_fraction: float = field(default=0.05, metadata={"help": "Abort when more of the data than this is bad."})

    def __post_init__(self):
        super().__post_init__()
        # Every parameter gets a gradient from every OCL objective, and logit_scale is used outside the forward:
        # DDP's unused-parameter search would mark it ready twice.
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
        if self.video_encoder not in VIDEO_ENCODERS:
            raise ValueError(f"video_encoder must be one of {VIDEO_ENCODERS}, got {self.video_encoder!r}")
        required_sources(self.ocl)  # fails early on an unknown term


class ClampLogitScaleCallback(TrainerCallback):
    """Clamp `logit_scale` into `[0, ln 200]` after every optimiser step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        logit_scale = _unwrap(model).logit_scale
        with torch.no_grad():
            logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


def encode_video(model: nn.Module, pixel_values: torch.Tensor, video_encoder: str = "proxy") -> torch.Tensor:
    """Normalised video features `(B, projection_dim)` of `(B, T, 3, H, W)`, through `model`'s forward.

    `mean_frames` encodes every frame as a one-frame video and averages the normalised frame features (then
    normalises the mean), as CLIP4Clip's mean pooling does.
    """
    if video_encoder == "proxy":
        return model(pixel_values=pixel_values).video_embeds
    batch, frames = pixel_values.shape[:2]
    frame_features = model(pixel_values=pixel_values.flatten(0, 1).unsqueeze(1)).video_embeds
    return nn.functional.normalize(frame_features.unflatten(0, (batch, frames)).mean(dim=1), dim=-1)


def encode_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Normalised text features `(N, projection_dim)`, through `model`'s forward."""
    return model(input_ids=input_ids, attention_mask=attention_mask).text_embeds


def _pad_to(tokens: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return nn.functional.pad(tokens, (0, length - tokens.shape[1]), value=value)


def encode_sources(
    model: nn.Module, inputs: dict[str, torch.Tensor], sources: set[str], video_encoder: str = "proxy"
) -> dict[str, torch.Tensor]:
    """Normalised features of the OCL sources (`video`, `frame`, `text`, `caption`) that `sources` names.

    S and C are encoded in one text forward. Raises `KeyError` naming a source the batch does not carry.
    """
    needs = {"video": "pixel_values", "frame": "frame_pixel_values", "text": "input_ids", "caption": "caption_input_ids"}
    if missing := sorted(source for source in sources if needs[source] not in inputs):
        raise KeyError(
            f"the OCL objective needs sources {missing} but the batch has no "
            f"{[needs[source] for source in missing]} (a caption column for 'caption')."
        )
    features = {}
    if "video" in sources:
        features["video"] = encode_video(model, inputs["pixel_values"], video_encoder)
    if "frame" in sources:
        features["frame"] = encode_video(model, inputs["frame_pixel_values"], "proxy")
    texts = [name for name in ("text", "caption") if name in sources]
    if texts:
        prefix = {"text": "", "caption": "caption_"}
        ids = [inputs[f"{prefix[name]}input_ids"] for name in texts]
        masks = [inputs.get(f"{prefix[name]}attention_mask", torch.ones_like(i)) for name, i in zip(texts, ids)]
        length = max(i.shape[1] for i in ids)
        # Padding positions are masked and after the end-of-text token, so their id does not matter.
        text_features = encode_text(
            model,
            torch.cat([_pad_to(i, length, 0) for i in ids]),
            torch.cat([_pad_to(m, length, 0) for m in masks]),
        )
        features.update(zip(texts, text_features.split([i.shape[0] for i in ids])))
    return features


class ClipVipTrainer(Trainer):
    """A `Trainer` that trains `ClipVipModel` with OCL and evaluates it with retrieval metrics.

    Use with `ClipVipTrainingArguments`, a stream from `training.data.build_video_text_dataset` and
    `ClipVipCollator`; set `remove_unused_columns=False` and `max_steps`.
    """

    args: ClipVipTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(ClampLogitScaleCallback)
        self.bad_samples = ClipVipBadSampleTracker(self.args.max_bad_fraction, where="training data")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.bad_samples.update_from_batch(inputs)
        inputs = {key: value for key, value in inputs.items() if key not in BATCH_BOOKKEEPING}
        features = encode_sources(model, inputs, required_sources(self.args.ocl), self.args.video_encoder)
        loss = ocl_loss(
            features,
            _unwrap(model).logit_scale,
            self.args.ocl,
            self.args.ocl_reduction,
            gather=True,
            local_loss=self.args.local_loss,
        )
        return (loss, features) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Embed the whole evaluation set (every item once over all processes), then log the retrieval metrics."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        text_features, video_features, text_to_video = self.embed_dataset(dataset)
        metrics = retrieval_metrics(text_features, video_features, text_to_video, dsl=self.args.eval_dsl)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in metrics.items()}
        metrics[f"{metric_key_prefix}_num_videos"] = video_features.shape[0]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def embed_dataset(self, dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text features `(N_t, d)`, video features `(N_v, d)` and each text's video index, over all processes."""
        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        if world_size() > 1:
            dataset = split_dataset_by_node(dataset, rank=rank(), world_size=world_size())
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        texts, videos, text_to_video, num_videos = [], [], [], 0
        device = self.args.device
        for batch in tqdm(loader, desc="Embedding evaluation set", disable=not self.is_world_process_zero()):
            with self.autocast_smart_context_manager():
                videos.append(encode_video(model, batch["pixel_values"].to(device), self.args.video_encoder).float())
                texts.append(encode_text(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float())
            text_to_video.append(batch["text_video_index"].to(device) + num_videos)
            num_videos += batch["pixel_values"].shape[0]
        model.train(was_training)
        dim = self.model.config.projection_dim
        local_videos = torch.cat(videos) if videos else torch.empty(0, dim, device=device)
        local_texts = torch.cat(texts) if texts else torch.empty(0, dim, device=device)
        local_index = torch.cat(text_to_video) if text_to_video else torch.empty(0, dtype=torch.long, device=device)
        videos_before = gather_uneven(torch.tensor([num_videos], device=device)).cumsum(0) - num_videos
        offset = videos_before[rank()] if world_size() > 1 else 0
        return (
            gather_uneven(local_texts).cpu(),
            gather_uneven(local_videos).cpu(),
            gather_uneven(local_index + offset).cpu(),
        )
