"""Hub releases: the model card, and pushing a model directory after checking that it loads offline.

A folder is pushed only if a fresh Python process, with the Hub unreachable (`HF_HUB_OFFLINE=1`) and outside
this repository (so the folder's own copy of the code is what runs), loads it with `AutoModel` and
`AutoProcessor` and `trust_remote_code=True`, with no weight missing, unexpected or misshapen.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCardData

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# Trainer leftovers that do not belong in a release.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "runs/*", "*.pt", "*.pth", "training_args.bin", ".*"]
METRIC_KEY = re.compile(r"^(?:eval_|test_)?(dsl_)?(t2v|v2t)_(r1|r5|r10|medr|meanr)$")
METRIC_NAMES = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "MdR", "meanr": "MnR"}

# Fine-tuned text-to-video R@1 (DSL in brackets) as published in the paper, per patch size.
PAPER_RESULTS = {
    32: [("MSR-VTT 1k-A", "50.1 / 74.8 / 84.6", "55.9"), ("DiDeMo", "48.6", "53.8"),
         ("ActivityNet Captions", "51.1", "59.1"), ("LSMDC", "25.6", "-")],
    16: [("MSR-VTT 1k-A", "54.2 / 77.2 / 84.8", "57.7"), ("DiDeMo", "50.5", "55.3"),
         ("ActivityNet Captions", "53.4", "61.4"), ("LSMDC", "29.4", "30.7")],
}
CITATION = """@inproceedings{xue2023clipvip,
  title     = {CLIP-ViP: Adapting Pre-trained Image-Text Model to Video-Language Representation Alignment},
  author    = {Xue, Hongwei and Sun, Yuchong and Liu, Bei and Fu, Jianlong and Song, Ruihua and Li, Houqiang and Luo, Jiebo},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}"""

_LOAD_CHECK = """
import json, sys
from transformers import AutoModel, AutoProcessor
model, info = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True, output_loading_info=True)
AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
with open(sys.argv[2], "w") as report:
    json.dump({key: [str(item) for item in value] for key, value in info.items()}, report)
"""


class ClipVipPushError(ValueError):
    """A model directory that must not be pushed, with the reasons."""


@dataclass
class PushArguments:
    """`clip-vip push` options."""

    model_dir: str = field(metadata={"help": "A model folder from conversion or training, with its processor."})
    repo_id: str = field(metadata={"help": "The Hub model repository, e.g. 'someone/clip-vip-base-patch32'."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    commit_message: str = "Upload CLIP-ViP model"
    token: str | None = field(default=None, metadata={"help": "Hub token; default: the logged-in one."})
    converted_from: str | None = field(
        default=None, metadata={"help": "The authors' checkpoint the weights were converted from (for the card)."}
    )
    provenance: str | None = field(default=None, metadata={"help": "How the weights were made (card text)."})
    license: str = "mit"
    datasets: list[str] | None = field(default=None, metadata={"help": "Hub ids of the training data sets."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id of the model it was adapted from."})


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _auto_map_problems(model_dir: Path, config_file: str, wanted: tuple[str, ...]) -> list[str]:
    """Problems with the `auto_map` of `config_file`: classes not mapped, or code files not present."""
    try:
        auto_map = _read_json(model_dir / config_file).get("auto_map", {})
    except (OSError, json.JSONDecodeError) as error:
        return [f"{config_file} cannot be read ({error})"]
    problems = [f"{config_file} has no auto_map entry for {name}" for name in wanted if name not in auto_map]
    modules = {reference.split(".")[0] for reference in auto_map.values() if isinstance(reference, str)}
    problems += [f"{module}.py (named by {config_file}'s auto_map) is missing" for module in sorted(modules)
                 if not (model_dir / f"{module}.py").is_file()]
    return problems


def find_problems(model_dir: str | Path) -> list[str]:
    """What a model directory lacks for a release, found without loading it: config with `auto_map`, code
    files, safetensors weights, processor and tokenizer files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return [f"{model_dir} is not a directory"]
    problems = []
    for config_file, wanted in (("config.json", ("AutoConfig", "AutoModel")), ("processor_config.json", ("AutoProcessor",))):
        if (model_dir / config_file).is_file():
            problems += _auto_map_problems(model_dir, config_file, wanted)
        else:
            problems.append(f"{config_file} is missing")
    if not any((model_dir / name).is_file() for name in WEIGHTS_FILES):
        pickled = sorted(path.name for path in model_dir.glob("*.bin"))
        problems.append("no safetensors weights (model.safetensors)" + (f"; found only {pickled}" if pickled else ""))
    if not any(all((model_dir / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        problems.append("no tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    return problems


def check_loads_offline(model_dir: str | Path, timeout: float = 600) -> None:
    """Load `model_dir` in a fresh offline process; raise `ClipVipPushError` saying why if it does not load."""
    model_dir = Path(model_dir).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        # cwd and a clean PYTHONPATH keep this repository's own package out of reach of the remote code.
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=scratch)
        # The loading report goes to a file: libraries print to stdout (transformers' remote-code question,
        # which no stdin can answer here, among them).
        report = Path(scratch) / "loading_info.json"
        result = subprocess.run(
            [sys.executable, "-c", _LOAD_CHECK, str(model_dir), str(report)],
            cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            error_lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            reason = error_lines[-1] if error_lines else f"exit status {result.returncode}"
            raise ClipVipPushError(f"{model_dir} does not load offline with trust_remote_code: {reason}")
        info = json.loads(report.read_text())
    bad = {key: value for key, value in info.items() if value}
    if bad:
        raise ClipVipPushError(f"{model_dir} loads, but not cleanly: {bad}")


def check_model_dir(model_dir: str | Path) -> None:
    """Raise `ClipVipPushError` with every reason `model_dir` is not fit to push."""
    problems = find_problems(model_dir)
    if problems:
        raise ClipVipPushError(f"refusing to push {model_dir}: " + "; ".join(problems))
    check_loads_offline(model_dir)


def _model_name(config: dict[str, Any]) -> str:
    vision = config.get("vision_config", {})
    if vision.get("hidden_size") == 768 and vision.get("num_hidden_layers") == 12 and vision.get("patch_size") in PAPER_RESULTS:
        return f"CLIP-ViP ViT-B/{vision['patch_size']}"
    return "CLIP-ViP (custom size)"


def _details_table(config: dict[str, Any]) -> str:
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    rows = [
        ("Video encoder", f"ViT, patch {vision.get('patch_size')}, {vision.get('image_size')} px, width "
                          f"{vision.get('hidden_size')}, {vision.get('num_hidden_layers')} layers"),
        ("Video proxies", vision.get("num_proxies")),
        ("Frames (temporal embedding)", vision.get("num_frames")),
        ("Text encoder", f"width {text.get('hidden_size')}, {text.get('num_hidden_layers')} layers, vocabulary "
                         f"{text.get('vocab_size')}, {text.get('max_position_embeddings')} positions"),
        ("Joint embedding", config.get("projection_dim")),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def _paper_results(config: dict[str, Any]) -> str:
    patch = config.get("vision_config", {}).get("patch_size")
    if _model_name(config).endswith("(custom size)"):
        return "The paper reports results for ViT-B/32 and ViT-B/16 models only; this configuration is neither."
    rows = "\n".join(f"| {dataset} | {recall} | {dsl} |" for dataset, recall, dsl in PAPER_RESULTS[patch])
    return (
        f"Text-to-video retrieval as reported by Xue et al. (2023) for ViT-B/{patch}, each after fine-tuning on\n"
        "that data set (a post-pretrained checkpoint is the starting point of this fine-tuning); not reproduced\n"
        "here, where the authors' data sets cannot be reached.\n\n"
        "| Data set | R@1 (/ R@5 / R@10) | R@1 with DSL |\n|---|---|---|\n" + rows
    )


def _evaluation(metrics: dict[str, Any], dataset_name: str | None) -> str:
    rows = []
    for key, value in metrics.items():
        match = METRIC_KEY.match(key)
        if match and isinstance(value, (int, float)):
            dsl, direction, name = match.groups()
            label = ("text-to-video" if direction == "t2v" else "video-to-text") + (" (DSL)" if dsl else "")
            rows.append(f"| {label} | {METRIC_NAMES[name]} | {value:.2f} |")
    if not rows:
        return ""
    on = f" on {dataset_name}" if dataset_name else ""
    return f"## Evaluation of this checkpoint\n\nRetrieval{on}, from `{METRICS_FILE}`:\n\n| Direction | Metric | Value |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"


def render_model_card(
    config: dict[str, Any],
    repo_id: str = "<repo_id>",
    metrics: dict[str, Any] | None = None,
    provenance: str | None = None,
    license: str = "mit",
    datasets: list[str] | None = None,
    base_model: str | None = None,
) -> str:
    """The card (Hub metadata header and body) for a model with `config` (the parsed config.json)."""
    metrics = metrics or {}
    header = ModelCardData(
        library_name="transformers",
        license=license,
        tags=["clip-vip", "clip", "video", "video-text-retrieval", "zero-shot-video-classification", "custom_code"],
        pipeline_tag="video-classification",
        datasets=datasets,
        base_model=base_model,
    )
    provenance = provenance or "How these weights were made was not recorded when this card was written."
    return f"""---
{header.to_yaml()}
---

# {_model_name(config)}

CLIP-ViP (Xue et al., ICLR 2023) adapts an image-text CLIP model to video. Each clip enters the vision
transformer as the patches of its sampled frames plus a few learned *video proxy* tokens; in every layer a
patch attends only to the proxies and to the patches of its own frame, while the proxies attend to
everything, so the model gathers the whole clip at little more than image cost. The class token, projected
into the joint space, is the video embedding; texts are embedded by CLIP's text encoder, and the two are
compared by cosine similarity. The authors post-pretrain with Omnisource Cross-modal Learning (video, a
middle frame, subtitles and generated captions as sources).

{_details_table(config)}

## How to use

```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

inputs = processor(text=["a dog catches a frisbee", "someone is cooking"], videos=["clip.mp4"], return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
print(outputs.logits_per_video.softmax(dim=-1))  # (videos, texts): which text fits each video
```

`model.get_video_features(pixel_values)` and `model.get_text_features(input_ids, attention_mask)` give the
(unnormalised) embeddings for search; normalise them before comparing.

## How this checkpoint was made

{provenance}

{_evaluation(metrics, metrics.get("dataset") or metrics.get("eval_dataset"))}## Results reported in the paper

{_paper_results(config)}

## What this implementation verified

The model was written from a description of the authors' code (the `CLIP-ViP` folder of microsoft/XPretrain),
not copied from it. On a small model in the authors' checkpoint format, its outputs (embeddings, hidden
states, pooled features and similarity logits, for 12, 8 and 1 frames, with eager and SDPA attention) agree
with those the authors' code computes to within 1e-5 of the output magnitude. The converter from the
authors' checkpoints is strict: any missing, unexpected or misshapen weight is named, never skipped.

## Limitations

- English text only, with CLIP's tokenizer (77 positions); long descriptions are truncated.
- A clip is seen as a few uniformly sampled frames (squashed to a square): long videos and fast events are
  seen coarsely.
- It inherits the biases of CLIP's web image-text data and of the video-text data it was adapted with;
  scores are similarities, not calibrated probabilities of truth.
- Loading runs the Python files in this repository (`trust_remote_code=True`): read them first.

## Citation

```bibtex
{CITATION}
```
"""


def converted_provenance(checkpoint: str) -> str:
    """The card's account of weights converted, unchanged, from the authors' checkpoint `checkpoint`."""
    return (
        f"Converted from the authors' released checkpoint `{checkpoint}` (microsoft/XPretrain, CLIP-ViP) with\n"
        "`modeling_clip_vip/convert_clip_vip_original_to_hf.py`; the weights are the authors', unchanged. The\n"
        "conversion is strict: every tensor of the checkpoint is mapped to a weight of this model with the same\n"
        "shape, and none of the model's weights is left uninitialised."
    )


def write_model_card(model_dir: str | Path, repo_id: str = "<repo_id>", **card_kwargs: Any) -> Path:
    """Write the card of `model_dir` (from its config.json, and its metrics.json when present) as README.md."""
    model_dir = Path(model_dir)
    metrics_path = model_dir / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else None
    card = render_model_card(_read_json(model_dir / "config.json"), repo_id=repo_id, metrics=metrics, **card_kwargs)
    (model_dir / CARD_FILE).write_text(card, encoding="utf-8")
    return model_dir / CARD_FILE


def push_model(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload CLIP-ViP model",
    token: str | None = None,
    **card_kwargs: Any,
) -> Any:
    """Check `model_dir`, write its card and upload it to the Hub model repository `repo_id`.

    Raises `ClipVipPushError` (before any Hub call) when the folder is incomplete or does not load.
    Returns the `CommitInfo` of the upload.
    """
    check_model_dir(model_dir)
    write_model_card(model_dir, repo_id=repo_id, **card_kwargs)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(model_dir),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=PUSH_IGNORE_PATTERNS,
    )


def push_from_arguments(args: PushArguments) -> Any:
    """`push_model` with the card options of `args`; `converted_from` writes the standard conversion account."""
    if args.converted_from and args.provenance:
        raise ValueError("give either converted_from or provenance, not both")
    provenance = converted_provenance(args.converted_from) if args.converted_from else args.provenance
    return push_model(
        args.model_dir, args.repo_id, private=args.private, revision=args.revision,
        commit_message=args.commit_message, token=args.token, provenance=provenance, license=args.license,
        datasets=args.datasets, base_model=args.base_model,
    )
