"""`clip-vip demo`: a temporal video-text benchmark that shows what video proxies buy.

One command, end to end through the real code paths: generate the moving-shapes set (`training.synthetic_data`),
train three small models from random weights on the same data and budget with `clip-vip train`'s code (OCL,
streamed data, the processor), embed the test set, and write a report folder:

- CLIP-ViP: video proxies (`attention_pattern="proxy"`), OCL `v-sc,f-c`;
- the paper's ablation: the same with `attention_pattern="full"` (every token sees every token);
- CLIP4Clip's mean pooling: every frame encoded as an image, frame features averaged (`video_encoder="mean_frames"`).

The test clips come in pairs, a clip and the same clip played backwards (with the reverse event's text); besides
retrieval metrics, the report gives each model's order accuracy, how often a query scores its own clip above the
reversed twin. The middle-frame captions of the generator stand in for `clip-vip caption` run with a real
captioning model.
"""

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling_clip_vip.configuration_clip_vip import ClipVipConfig  # noqa: E402
from modeling_clip_vip.processing_clip_vip import decode_video  # noqa: E402

from .data import build_video_text_dataset, read_manifest  # noqa: E402
from .retrieval import rank_metrics, retrieval_ranks  # noqa: E402
from .synthetic_data import generate_moving_shapes  # noqa: E402
from .tokenization import build_word_tokenizer  # noqa: E402
from .train import DataArguments, ModelArguments, manifest_words, train  # noqa: E402
from .trainer import ClipVipTrainer, ClipVipTrainingArguments  # noqa: E402

logger = logging.getLogger(__name__)

CAPTION_NOTE = (
    "The auxiliary captions (OCL source C) are the generator's descriptions of each clip's middle frame: they "
    "stand in for `clip-vip caption` run with a real image captioning model."
)
METRIC_COLUMNS = (
    "t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "order_accuracy"
)
SUBSETS = {"all": "all queries", "motion": "motion-dependent queries", "change": "appear / disappear / recolour"}


@dataclass
class DemoVariant:
    """One of the compared models: its name in the report, attention pattern and video encoder."""

    key: str
    name: str
    attention_pattern: str
    video_encoder: str


VARIANTS = (
    DemoVariant("clip_vip", "CLIP-ViP (video proxies)", "proxy", "proxy"),
    DemoVariant("full_attention", "Full attention (ablation)", "full", "proxy"),
    DemoVariant("mean_pooling", "Mean pooling (CLIP4Clip)", "proxy", "mean_frames"),
)


@dataclass
class DemoArguments:
    """Sizes of the demo; the defaults fit in about eight minutes on a 2-core CPU."""

    output_dir: str = field(default="clip-vip-demo", metadata={"help": "The report folder (data and models inside)."})
    num_train_clips: int = field(default=1008, metadata={"help": "Training clips (126 kinds, cycled)."})
    num_test_clips: int = field(
        default=126, metadata={"help": "Test clips, one query each: pairs of a clip and its time-reversed twin (even)."}
    )
    num_frames: int = field(default=4, metadata={"help": "Frames sampled per clip (T); clips have twice as many."})
    image_size: int = field(default=32, metadata={"help": "Clip and model resolution in pixels."})
    patch_size: int = 8
    hidden_size: int = field(default=128, metadata={"help": "Width of the vision and text transformers."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the vision and text transformers."})
    num_proxies: int = 3
    max_steps: int = field(default=300, metadata={"help": "Optimiser steps per model."})
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    dataloader_num_workers: int = 2
    num_examples: int = field(default=4, metadata={"help": "Queries shown in retrieval_examples.png."})
    seed: int = 0


def demo_config(args: DemoArguments, vocab_size: int, attention_pattern: str) -> ClipVipConfig:
    """A small random-weight CLIP-ViP; the text side is as wide and deep as the vision side."""
    heads = max(1, args.hidden_size // 32)
    shared = dict(
        hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size, num_hidden_layers=args.num_layers,
        num_attention_heads=heads, hidden_act="quick_gelu",
    )
    return ClipVipConfig(
        text_config=dict(
            shared, vocab_size=vocab_size, max_position_embeddings=32,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            shared, image_size=args.image_size, patch_size=args.patch_size, num_proxies=args.num_proxies,
            num_frames=args.num_frames, attention_pattern=attention_pattern,
        ),
        projection_dim=args.hidden_size,
        # CLIP's initial temperature (1/0.07) for training from scratch; the authors' ln 100 suits fine-tuning.
        logit_scale_init_value=math.log(1 / 0.07),
    )


def train_variant(
    args: DemoArguments, variant: DemoVariant, manifests: dict[str, Path], vocab_size: int, out_dir: Path
) -> ClipVipTrainer:
    """Train one variant through `training.train.train` (no evaluation there: the demo embeds the test set itself)."""
    config_path = out_dir / "config.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    demo_config(args, vocab_size, variant.attention_pattern).to_json_file(config_path)
    model_args = ModelArguments(config_name=str(config_path), build_tokenizer_from_data=True)
    data_args = DataArguments(
        train_file=[str(manifests["train"])], num_frames=args.num_frames, max_text_length=32,
        num_parts=2 * max(args.dataloader_num_workers, 1),
    )
    training_args = ClipVipTrainingArguments(
        output_dir=str(out_dir), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine", weight_decay=args.weight_decay, logging_steps=max(1, args.max_steps // 50),
        save_strategy="no", report_to="none", seed=args.seed, dataloader_num_workers=args.dataloader_num_workers,
        ocl="v-sc,f-c", video_encoder=variant.video_encoder,
    )
    return train(model_args, data_args, training_args)


def embed_test_set(
    trainer: ClipVipTrainer, manifest: Path, num_videos: int, num_frames: int
) -> dict[str, torch.Tensor]:
    """Text and video features of the test set, in manifest order (read as one part so the order is kept)."""
    dataset = build_video_text_dataset(manifest, num_frames, mode="uniform", num_parts=1)
    text_features, video_features, text_to_video = trainer.embed_dataset(dataset)
    if video_features.shape[0] != num_videos:
        raise RuntimeError(f"embedded {video_features.shape[0]} of {num_videos} test clips: some failed to decode")
    return {"text": text_features, "video": video_features, "text_to_video": text_to_video}


def query_subsets(records: list[dict]) -> dict[str, torch.Tensor]:
    """`(N,)` bool masks over the test clips: all, the moves (motion-dependent), the other events."""
    motion = torch.tensor([record["motion_dependent"] for record in records])
    return {"all": torch.ones_like(motion), "motion": motion, "change": ~motion}


def order_accuracy(similarity: torch.Tensor, text_to_video: torch.Tensor, twin: torch.Tensor) -> torch.Tensor:
    """Per query: 1 if its clip outscores the clip's time-reversed twin, 0.5 on a tie, else 0.

    Args:
        similarity: `(N_t, N_v)`; text_to_video: `(N_t,)` long; twin: `(N_v,)` long, each clip's reversed twin.
    """
    rows = torch.arange(similarity.shape[0])
    margin = similarity[rows, text_to_video] - similarity[rows, twin[text_to_video]]
    # Mean pooling of identical frames gives a clip and its reversal the same features up to summation order.
    tie = margin.abs() <= 1e-6
    return torch.where(tie, 0.5, (margin > 0).double())


def benchmark_metrics(
    text_features: torch.Tensor, video_features: torch.Tensor, text_to_video: torch.Tensor, twin: torch.Tensor,
    subsets: dict[str, torch.Tensor],
) -> dict[str, dict[str, float]]:
    """Retrieval metrics (SPEC §6) and order accuracy (percent) per subset of queries.

    Every query is ranked against the whole test set; a subset only selects which ranks are reported (its
    queries for t2v, its clips for v2t).

    Args:
        text_features: `(N_t, d)`; video_features: `(N_v, d)`; text_to_video: `(N_t,)` long.
        twin: `(N_v,)` long, each clip's time-reversed twin; subsets: name -> `(N_v,)` bool mask of clips.
    """
    similarity = F.normalize(text_features.float(), dim=-1) @ F.normalize(video_features.float(), dim=-1).T
    targets = F.one_hot(text_to_video.long(), video_features.shape[0]).bool()
    t2v, v2t = retrieval_ranks(similarity, targets), retrieval_ranks(similarity.T, targets.T)
    order = order_accuracy(similarity, text_to_video.long(), twin.long())
    metrics = {}
    for subset, clips in subsets.items():
        queries = clips[text_to_video]
        metrics[subset] = rank_metrics(t2v[queries], "t2v") | rank_metrics(v2t[clips], "v2t")
        metrics[subset]["order_accuracy"] = 100.0 * order[queries].mean().item()
    return metrics


def markdown_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per (subset, model): t2v and v2t R@1/5/10 (%) and median rank, and order accuracy (%)."""
    header = (
        "| queries | model | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | v2t R@1 | v2t R@5 | v2t R@10 | v2t MdR "
        "| order acc. |"
    )
    lines = [header, "|" + "---|" * (2 + len(METRIC_COLUMNS))]
    for subset, description in SUBSETS.items():
        for variant in VARIANTS:
            values = metrics[variant.key][subset]
            cells = [f"{values[column]:.1f}" for column in METRIC_COLUMNS]
            lines.append(f"| {description} | {variant.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_training_curves(histories: dict[str, list[dict]], path: Path) -> None:
    """The training loss per step of each variant, from the Trainer's log history."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for variant in VARIANTS:
        points = [(entry["step"], entry["loss"]) for entry in histories[variant.key] if "loss" in entry]
        axis.plot(*zip(*points), label=variant.name)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("OCL loss (v-sc + f-c, summed)")
    axis.set_title("Training loss on the moving-shapes set")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def frame_strip(video: Path, num_frames: int = 4) -> np.ndarray:
    """`num_frames` evenly spaced frames of a clip side by side, with a thin grey gap: `(H, W', 3)` uint8."""
    frames = decode_video(video, num_frames, mode="uniform", with_middle_frame=False).frames
    gap = np.full((frames.shape[1], max(1, frames.shape[2] // 16), 3), 128, dtype=np.uint8)
    pieces = [piece for frame in frames for piece in (frame, gap)][:-1]
    return np.concatenate(pieces, axis=1)


def plot_retrieval_examples(
    features: dict[str, dict[str, torch.Tensor]], records: list[dict], data_dir: Path, queries: list[int],
    path: Path, top_k: int = 3,
) -> None:
    """For each query text: the top-`top_k` clips of CLIP-ViP and of mean pooling, the correct clip boxed in green."""
    shown = [variant for variant in VARIANTS if variant.key in ("clip_vip", "mean_pooling")]
    figure, axes = plt.subplots(
        len(queries), top_k * len(shown), figsize=(2.6 * top_k * len(shown), 1.5 * len(queries) + 0.6), squeeze=False
    )
    for row, query in enumerate(queries):
        for block, variant in enumerate(shown):
            text, video = features[variant.key]["text"][query], features[variant.key]["video"]
            scores = F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1)
            for rank, index in enumerate(scores.topk(top_k).indices.tolist()):
                axis = axes[row, block * top_k + rank]
                axis.imshow(frame_strip(data_dir / records[index]["video"]), interpolation="nearest")
                correct = index == int(features[variant.key]["text_to_video"][query])
                for spine in axis.spines.values():
                    spine.set(color="tab:green" if correct else "tab:red", linewidth=3 if correct else 1)
                axis.set_xticks([])
                axis.set_yticks([])
                label = f"#{rank + 1}" + (" correct" if correct else "")
                axis.set_xlabel(label, fontsize=8, color="tab:green" if correct else "black")
                if row == 0 and rank == 0:
                    axis.set_title(variant.name, fontsize=9, loc="left")
        axes[row, 0].set_ylabel(f'"{records[query]["text"]}"', rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(
        "Top-3 clips for the first test query of each kind of event (frames left to right in time; green: the "
        "query's clip)", fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(
    args: DemoArguments, metrics: dict, records: list[dict], wall_seconds: dict[str, float], out_dir: Path
) -> Path:
    num_motion = sum(record["motion_dependent"] for record in records)
    lines = [
        "# CLIP-ViP demo: what video proxies buy on a temporal benchmark",
        "",
        f"Three models trained from random weights on the same {args.num_train_clips} generated clips for "
        f"{args.max_steps} steps of batch {args.batch_size} ({args.num_frames} frames of {args.image_size} px, "
        f"width {args.hidden_size}, {args.num_layers} layers), evaluated on {len(records)} test clips with one "
        f"query each. The test clips come in pairs: a clip and the same clip played backwards, whose text names "
        "the reverse event (left and right, up and down, appears and disappears, red to blue and blue to red). "
        "Both hold the same frames, so only their order tells the two texts apart.",
        "",
        f"> {CAPTION_NOTE}",
        "",
        markdown_table(metrics),
        "",
        "R@k in percent, MdR the median rank (ranks from 1, ties counted against the true item). Every query is "
        "ranked against the whole test set; a row reports its subset's queries (t2v) and clips (v2t). "
        f"Motion-dependent queries ({num_motion}) name the direction of a move; the others an appearance, "
        "a disappearance or a change of colour. Order acc.: how often a query scores its own clip above the "
        "clip's time-reversed twin (a tie counts half). Mean pooling sees the same frames in both clips of a pair "
        "(up to video compression), so it sits near 50%; a higher figure is temporal order the model has learned.",
        "",
        "Training seconds per model: "
        + ", ".join(f"{variant.name} {wall_seconds[variant.key]:.0f}" for variant in VARIANTS) + ".",
        "",
        "Files: `training_curves.png` (loss per step), `retrieval_examples.png` (top-3 clips for the first query of "
        "each kind of event), "
        "`metrics.json`, `training_log.json` (the Trainers' log histories), `features.pt` (text/video features "
        "and each text's clip per model, each clip's twin, to recompute the table), `models/` (the trained model "
        "folders), `data/` (clips and manifests).",
        "",
        "Options used: `" + json.dumps(asdict(args)) + "`",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def pick_example_queries(records: list[dict], count: int) -> list[int]:
    """The first test query of each kind of event, appearances and colour changes before moves.

    Picked by kind, not by result, so the picture shows what the models get wrong as well as right.
    """
    kinds = ("appears", "disappears", "changes", "left", "up", "right", "down")
    firsts = {}
    for query, record in enumerate(records):
        firsts.setdefault(record["event"], query)
    return [firsts[kind] for kind in kinds if kind in firsts][:count]


def run_demo(args: DemoArguments) -> Path:
    """Generate the data, train and evaluate the three variants, write the report; returns `report.md`'s path."""
    start = time.perf_counter()
    out_dir = Path(args.output_dir)
    data_dir = out_dir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    print(f"[demo] generating {args.num_train_clips} training and {args.num_test_clips} test clips in {data_dir}")
    manifests = generate_moving_shapes(
        data_dir, num_train=args.num_train_clips, num_test=args.num_test_clips, size=args.image_size,
        num_frames=2 * args.num_frames, seed=args.seed,
    )
    records = read_manifest(manifests["test"], streaming=False).to_list()
    print(f"[demo] {CAPTION_NOTE}")
    words = manifest_words([str(manifests["train"]), str(manifests["test"])], ("text", "caption"))
    vocab_size = len(build_word_tokenizer(words))

    features, histories, wall_seconds = {}, {}, {}
    for number, variant in enumerate(VARIANTS, 1):
        print(f"[demo] training model {number}/{len(VARIANTS)}: {variant.name}")
        started = time.perf_counter()
        trainer = train_variant(args, variant, manifests, vocab_size, out_dir / "models" / variant.key)
        wall_seconds[variant.key] = time.perf_counter() - started
        histories[variant.key] = trainer.state.log_history
        features[variant.key] = embed_test_set(trainer, manifests["test"], len(records), args.num_frames)

    subsets = query_subsets(records)
    twin = torch.tensor([record["twin"] for record in records])
    metrics = {
        key: benchmark_metrics(f["text"], f["video"], f["text_to_video"], twin, subsets) for key, f in features.items()
    }
    torch.save({"features": features, "subsets": subsets, "twin": twin, "texts": [r["text"] for r in records],
                "videos": [r["video"] for r in records]}, out_dir / "features.pt")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "training_log.json").write_text(json.dumps(histories, indent=1) + "\n")
    plot_training_curves(histories, out_dir / "training_curves.png")
    queries = pick_example_queries(records, args.num_examples)
    plot_retrieval_examples(features, records, data_dir, queries, out_dir / "retrieval_examples.png")
    report = write_report(args, metrics, records, wall_seconds, out_dir)

    print(markdown_table(metrics))
    print(f"[demo] {CAPTION_NOTE}")
    print(f"[demo] done in {time.perf_counter() - start:.0f} s; the report is in {report.resolve()}")
    return report
