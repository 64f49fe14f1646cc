"""The `clip-vip` command: `clip-vip SUBCOMMAND [options]`; `clip-vip SUBCOMMAND --help` lists the options.

Each subcommand parses its arguments with `HfArgumentParser` and calls a function of this package that a user
could call from Python with the same effect.
"""

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import HfArgumentParser

ARGS_FILE_FLAG = "--args_file"


def _parse(command: str, argv: list[str], *classes: type, **options) -> tuple:
    """`argv` parsed into one instance of each of `classes`, with `clip-vip COMMAND` in the usage line."""
    return HfArgumentParser(classes, prog=f"clip-vip {command}").parse_args_into_dataclasses(args=argv, **options)


@dataclass
class EvaluateArguments:
    model_dir: str = field(metadata={"help": "A saved ClipVipModel folder (with its processor)."})
    test_file: list[str] = field(metadata={"help": "A test manifest, or .tar shards."})
    output_dir: str = field(metadata={"help": "Where metrics.json is written."})
    batch_size: int = 8
    dsl: bool = field(default=False, metadata={"help": "Also report dual-softmax (DSL) metrics."})
    video_encoder: str = field(default="proxy", metadata={"help": "'proxy' or 'mean_frames'."})


def run_train(argv: list[str]) -> None:
    from .train import DataArguments, ModelArguments, train
    from .trainer import ClipVipTrainingArguments

    model_args, data_args, training_args = _parse(
        "train", argv, ModelArguments, DataArguments, ClipVipTrainingArguments,
        args_file_flag=ARGS_FILE_FLAG, look_for_args_file=False,
    )
    trainer = train(model_args, data_args, training_args)
    print(f"Saved the trained model to {trainer.args.output_dir}")


def run_evaluate(argv: list[str]) -> None:
    from .train import DataArguments, evaluate_model

    args, data_args = _parse("evaluate", argv, EvaluateArguments, DataArguments)
    metrics = evaluate_model(
        args.model_dir, args.test_file, args.output_dir, data_args, args.batch_size, args.dsl, args.video_encoder
    )
    print(json.dumps(metrics, indent=2))


def run_caption(argv: list[str]) -> None:
    from .caption import CaptionArguments, caption_manifest

    (args,) = _parse("caption", argv, CaptionArguments)
    summary = caption_manifest(args)
    print(f"{summary.num_captioned} clips captioned, {summary.num_skipped} skipped "
          f"(listed in {summary.skipped_file}); wrote {summary.output_file}")


def run_demo(argv: list[str]) -> None:
    from .demo import DemoArguments, run_demo as demo

    (args,) = _parse("demo", argv, DemoArguments)
    demo(args)


def run_index(argv: list[str]) -> None:
    from .video_search import IndexArguments, build_video_index

    (args,) = _parse("index", argv, IndexArguments)
    summary = build_video_index(args)
    print(f"{summary.num_indexed} videos indexed ({summary.index_type}), {summary.num_skipped} skipped "
          f"(listed in {summary.skipped_file}); wrote {summary.output_dir}")


def run_search(argv: list[str]) -> None:
    from .video_search import SearchArguments, search_videos

    (args,) = _parse("search", argv, SearchArguments)
    for rank, hit in enumerate(search_videos(args), 1):
        print(f"{rank:>4}  {hit.score:.4f}  {hit.video}")


def run_classify(argv: list[str]) -> None:
    from .classification import ClassifyArguments, classify_files

    (args,) = _parse("classify", argv, ClassifyArguments)
    for result in classify_files(args):
        print(result["video"])
        print("\n".join(f"  {score:.4f}  {label}" for label, score in result["scores"].items()))


def run_push(argv: list[str]) -> None:
    from .hub import ClipVipPushError, PushArguments, push_from_arguments

    (args,) = _parse("push", argv, PushArguments)
    try:
        push_from_arguments(args)
    except ClipVipPushError as error:
        raise SystemExit(f"clip-vip push: nothing was uploaded. {error}") from error
    print(f"Pushed {args.model_dir} to {args.repo_id}" + (f" (revision {args.revision})" if args.revision else ""))


SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (run_train, "train with OCL (all TrainingArguments options apply)"),
    "evaluate": (run_evaluate, "text-video retrieval metrics of a model folder on a test set"),
    "caption": (run_caption, "auxiliary captions (OCL source C) from each clip's middle frame"),
    "demo": (run_demo, "train and compare CLIP-ViP, full attention and mean pooling on generated clips"),
    "index": (run_index, "embed the videos of a manifest or folder into a searchable FAISS index"),
    "search": (run_search, "the videos of an index closest to a text or to a video"),
    "classify": (run_classify, "zero-shot scores of videos against label names"),
    "push": (run_push, "check that a model folder loads, write its card, upload it to the Hub"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
        print("usage: clip-vip SUBCOMMAND [options]\n\nsubcommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"clip-vip: unknown subcommand {argv[0]!r}")
        return
    command, _ = SUBCOMMANDS[argv[0]]
    command(argv[1:])


if __name__ == "__main__":
    main()
