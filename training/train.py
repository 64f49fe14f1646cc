"""What `clip-vip train` and `clip-vip evaluate` do, callable from Python with the same effect.

Multi-process training needs no code of its own: launch the same command with `torchrun --nproc_per_node N`
or `accelerate launch` (DeepSpeed through `--deepspeed ds_config.json` where installed). Each process reads
its own shards of the data (`accelerator_config.dispatch_batches` is set to `False` here), so use at least as
many manifest parts (`--num_parts`) or tar shards as processes times DataLoader workers.
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, set_seed

from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from modeling_clip_vip.convert_clip_vip_original_to_hf import convert_original_checkpoint, load_config
from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from modeling_clip_vip.processing_clip_vip import ClipVipProcessor

from .classification import load_for_inference
from .data import ClipVipCollator, build_video_text_dataset, read_manifest
from .losses import required_sources
from .tokenization import build_word_tokenizer
from .trainer import ClipVipTrainer, ClipVipTrainingArguments

logger = logging.getLogger(__name__)
HUB_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "hub_configs"


@dataclass
class ModelArguments:
    """Where the model comes from: one of a model folder, an authors' checkpoint, or a config (random weights)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A ClipVipModel folder, or a transformers CLIP folder (through from_clip)."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A hub_configs preset (e.g. clip-vip-base-patch32) or a config folder/JSON: random weights, "
        "or the config of --original_checkpoint."},
    )
    original_checkpoint: str | None = field(default=None, metadata={"help": "An authors' .pt checkpoint."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A tokenizer folder (defaults to the model folder's)."}
    )
    build_tokenizer_from_data: bool = field(
        default=False,
        metadata={"help": "Offline without CLIP's vocabulary: build a word-level CLIP tokenizer from the manifests."},
    )
    num_proxies: int = field(default=3, metadata={"help": "Video proxies when starting from a CLIP folder."})
    attention_pattern: str | None = field(default=None, metadata={"help": "Override: 'proxy' or 'full'."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "'sdpa' or 'eager'."})


@dataclass
class DataArguments:
    """The data: manifests (JSON lines, CSV, Parquet) or WebDataset tar shards (see `training.data`)."""

    train_file: list[str] | None = field(default=None, metadata={"help": "A manifest, or .tar shards."})
    eval_file: list[str] | None = field(default=None, metadata={"help": "A manifest, or .tar shards."})
    video_column: str = "video"
    text_column: str = "text"
    caption_column: str = "caption"
    num_frames: int = field(default=12, metadata={"help": "Frames sampled per clip (T)."})
    max_text_length: int = field(default=70, metadata={"help": "Token limit (the authors: 70 post-pretraining, 50 fine-tuning)."})
    num_parts: int = field(default=8, metadata={"help": "Shards a manifest is read as (>= processes x workers)."})
    shuffle_buffer_size: int = field(default=256, metadata={"help": "Records shuffled before decoding (0: off)."})


def resolve_config(config_name: str) -> ClipVipConfig:
    """A `ClipVipConfig` from a `hub_configs` preset name, a config folder, or a JSON file."""
    preset = HUB_CONFIGS_DIR / config_name
    path = preset if (preset / "config.json").is_file() else Path(config_name)
    if not path.exists():
        presets = sorted(p.name for p in HUB_CONFIGS_DIR.iterdir() if (p / "config.json").is_file())
        raise FileNotFoundError(f"config {config_name!r} is neither a folder/file nor one of the presets {presets}")
    return load_config(path)


def manifest_words(paths: list[str], columns: tuple[str, ...]) -> set[str]:
    """Every lower-case word in the given text columns of the manifests (for `build_word_tokenizer`)."""
    words = set()
    for path in paths:
        rows = read_manifest(path, streaming=False)
        for column in columns:
            if column not in rows.column_names:
                continue
            for value in rows[column]:
                for text in value if isinstance(value, list) else [value]:
                    words.update(re.findall(r"[a-z]+", str(text).lower()))
    return words


def load_tokenizer(model_args: ModelArguments, data_args: DataArguments) -> PreTrainedTokenizerBase:
    if model_args.build_tokenizer_from_data:
        files = [f for f in (data_args.train_file or []) + (data_args.eval_file or []) if not f.endswith(".tar")]
        words = manifest_words(files, (data_args.text_column, data_args.caption_column))
        return build_word_tokenizer(words)
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source is None:
        raise ValueError("no tokenizer: pass --tokenizer_name (or --build_tokenizer_from_data when offline)")
    return AutoTokenizer.from_pretrained(source)


def _with_pattern(config: ClipVipConfig, attention_pattern: str | None) -> ClipVipConfig:
    if attention_pattern:
        config.vision_config.attention_pattern = attention_pattern
    return config


def load_model_and_processor(
    model_args: ModelArguments, data_args: DataArguments
) -> tuple[ClipVipModel, ClipVipProcessor]:
    """The model and processor `clip-vip train` starts from (see `ModelArguments`)."""
    source = model_args.model_name_or_path
    pattern = model_args.attention_pattern
    if model_args.original_checkpoint:
        if not model_args.config_name:
            raise ValueError("--original_checkpoint needs --config_name (the checkpoint's architecture)")
        config = _with_pattern(resolve_config(model_args.config_name), pattern)
        model = convert_original_checkpoint(model_args.original_checkpoint, config)
    elif source and json.loads((Path(source) / "config.json").read_text()).get("model_type") == "clip":
        model = ClipVipModel.from_clip(
            source, num_proxies=model_args.num_proxies, num_frames=data_args.num_frames,
            attention_pattern=pattern or "proxy",
        )
    elif source:
        model = ClipVipModel.from_pretrained(source, config=_with_pattern(ClipVipConfig.from_pretrained(source), pattern))
    elif model_args.config_name:
        config = _with_pattern(resolve_config(model_args.config_name), pattern)
        config.vision_config.num_frames = data_args.num_frames
        model = ClipVipModel(config)
    else:
        raise ValueError("pass --model_name_or_path, --original_checkpoint with --config_name, or --config_name")
    model.set_attn_implementation(model_args.attn_implementation)

    if source and Path(source, "processor_config.json").is_file() and not model_args.build_tokenizer_from_data:
        processor = ClipVipProcessor.from_pretrained(source)
    else:
        processor = ClipVipProcessor.for_config(model.config, load_tokenizer(model_args, data_args), data_args.num_frames)
    processor.max_length = min(data_args.max_text_length, model.config.text_config.max_position_embeddings)
    return model, processor


def build_datasets(data_args: DataArguments, training_args: ClipVipTrainingArguments, needs_caption: bool):
    """The training stream (jittered frames, one text drawn per clip) and the evaluation stream (uniform, all texts)."""
    common = dict(
        num_frames=data_args.num_frames,
        video_column=data_args.video_column,
        text_column=data_args.text_column,
        caption_column=data_args.caption_column,
        seed=training_args.seed,
        num_parts=data_args.num_parts,
        max_bad_fraction=training_args.max_bad_fraction,
    )
    train = eval_ = None
    if data_args.train_file:
        train = build_video_text_dataset(
            _files(data_args.train_file), mode="jitter", require_caption=needs_caption,
            shuffle_buffer_size=data_args.shuffle_buffer_size, **common,
        )
    if data_args.eval_file:
        eval_ = build_video_text_dataset(_files(data_args.eval_file), mode="uniform", **common)
    return train, eval_


def _files(files: list[str]) -> str | list[str]:
    return files[0] if len(files) == 1 else files


def prepare_training_arguments(training_args: ClipVipTrainingArguments) -> None:
    """Settings a streamed video-text dataset needs (see `training.data`)."""
    training_args.remove_unused_columns = False
    training_args.accelerator_config.dispatch_batches = False
    if training_args.max_steps <= 0:
        raise ValueError("--max_steps is required: a streamed dataset has no length")


def train(
    model_args: ModelArguments, data_args: DataArguments, training_args: ClipVipTrainingArguments
) -> ClipVipTrainer:
    """Train with OCL, evaluate if an eval set is given, save a complete model folder to `output_dir`."""
    prepare_training_arguments(training_args)
    set_seed(training_args.seed)  # before the model is built: random initial weights follow --seed
    model, processor = load_model_and_processor(model_args, data_args)
    needs_caption = "caption" in required_sources(training_args.ocl)
    train_dataset, eval_dataset = build_datasets(data_args, training_args, needs_caption)
    if train_dataset is None:
        raise ValueError("--train_file is required for training")
    trainer = ClipVipTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ClipVipCollator(processor, max_length=processor.max_length),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    logger.info("training data: %s", trainer.bad_samples.summary())
    trainer.save_model()
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    return trainer


def evaluate_model(
    model_dir: str, test_file: list[str], output_dir: str, data_args: DataArguments, batch_size: int = 8,
    dsl: bool = False, video_encoder: str = "proxy",
) -> dict[str, float]:
    """Retrieval metrics of a saved model on a test manifest; written to `output_dir/metrics.json`."""
    model, processor = load_for_inference(model_dir)
    args = ClipVipTrainingArguments(
        output_dir=output_dir, per_device_eval_batch_size=batch_size, eval_dsl=dsl, video_encoder=video_encoder,
        report_to="none", remove_unused_columns=False,
    )
    data_args.eval_file = test_file
    _, eval_dataset = build_datasets(data_args, args, needs_caption=False)
    trainer = ClipVipTrainer(
        model=model, args=args, data_collator=ClipVipCollator(processor, max_length=processor.max_length),
        processing_class=processor,
    )
    metrics = trainer.evaluate(eval_dataset, metric_key_prefix="test")
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
