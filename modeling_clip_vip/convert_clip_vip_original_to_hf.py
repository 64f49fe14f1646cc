"""Convert the authors' CLIP-ViP checkpoints (`pretrain_clipvip_base_32.pt` and the like) into a `ClipVipModel`.

The authors save a plain state dict of a wrapper whose CLIP sits in `clipmodel` (keys `clipmodel.*`, or
`module.clipmodel.*` under data-parallel training), with transformers 4.x CLIP names plus
`vision_model.embeddings.added_cls` (the proxies) and `vision_model.embeddings.temporal_embedding`.
Conversion is strict: every tensor is accounted for, and nothing is written unless all of them fit.

    python -m modeling_clip_vip.convert_clip_vip_original_to_hf --checkpoint X.pt --config CONFIG --output DIR
"""

import argparse
import json
import os
import pickle
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .configuration_clip_vip import ClipVipConfig, ClipVipTextConfig, ClipVipVisionConfig, architecture_fields
from .modeling_clip_vip import ClipVipModel
from .processing_clip_vip import ClipVipProcessor

ORIGINAL_PREFIXES = ("module.clipmodel.", "clipmodel.")
RENAMED_KEYS = {"vision_model.embeddings.added_cls": "vision_model.embeddings.proxy_embedding"}
POSITION_ID_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


class CheckpointConversionError(ValueError):
    """The checkpoint does not fit the configuration; the message lists every offending key."""


def load_original_state_dict(checkpoint_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain `torch.save`d state dict safely (`weights_only=True`), with a clear error otherwise."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointConversionError(
            f"{path} holds objects other than tensors and plain containers, which are not loaded for safety "
            f"(torch.load(weights_only=True) refused it): {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # torch.load raises many kinds of errors on arbitrary bytes
        raise CheckpointConversionError(f"{path} is not a PyTorch checkpoint: {error}") from error
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointConversionError(
            f"{path} is not a state dict: expected a non-empty dict of name -> tensor, got {type(state_dict).__name__}."
        )
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointConversionError(
            f"{path} is not a plain state dict: entries {not_tensors} are not tensors."
        )
    return state_dict


def _check_position_ids(name: str, tensor: torch.Tensor) -> None:
    expected = torch.arange(tensor.shape[-1]).expand(1, -1)
    if tensor.shape != expected.shape or not torch.equal(tensor.long(), expected):
        raise CheckpointConversionError(f"{name} is expected to be a plain arange of shape (1, N), got {tensor}.")


def rename_original_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip the wrapper prefix and rename to our parameter names. Returns the renamed dict and unprefixed keys."""
    renamed, unprefixed = {}, []
    for key, tensor in state_dict.items():
        prefix = next((p for p in ORIGINAL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unprefixed.append(key)
            continue
        name = key[len(prefix) :]
        if name in POSITION_ID_KEYS:
            _check_position_ids(key, tensor)
            continue
        renamed[RENAMED_KEYS.get(name, name)] = tensor
    return renamed, unprefixed


def _describe_layout_mismatch(name: str, found: torch.Size, expected: torch.Size, config: ClipVipConfig) -> str:
    vision = config.vision_config
    if name.endswith("proxy_embedding"):
        return f"the checkpoint has {found[0]} proxies but the config says num_proxies={vision.num_proxies}"
    if name.endswith("temporal_embedding"):
        return f"the checkpoint's temporal table has {found[1]} frames but the config says num_frames={vision.num_frames}"
    if name.endswith("position_embedding.weight") and name.startswith("vision_model"):
        return (
            f"the checkpoint has {found[0] - 1} patches per frame but the config's image_size/patch_size "
            f"({vision.image_size}/{vision.patch_size}) give {expected[0] - 1}"
        )
    return ""


def check_state_dict(state_dict: dict[str, torch.Tensor], model: ClipVipModel, unprefixed: list[str]) -> None:
    """Raise `CheckpointConversionError` listing every missing, unexpected and misshapen tensor."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if unprefixed:
        problems.append(f"keys without a {' or '.join(ORIGINAL_PREFIXES)} prefix: {sorted(unprefixed)}")
    if missing:
        problems.append(f"missing from the checkpoint: {missing}")
    if unexpected:
        problems.append(f"unexpected in the checkpoint: {unexpected}")
    for name in sorted(set(expected) & set(state_dict)):
        found, wanted = state_dict[name].shape, expected[name].shape
        if found != wanted:
            why = _describe_layout_mismatch(name, found, wanted, model.config)
            problems.append(
                f"{name} has shape {tuple(found)} but the model expects {tuple(wanted)}" + (f" ({why})" if why else "")
            )
    if problems:
        raise CheckpointConversionError("The checkpoint does not match the config:\n- " + "\n- ".join(problems))


def convert_original_checkpoint(checkpoint_path: str | os.PathLike, config: ClipVipConfig) -> ClipVipModel:
    """Build a `ClipVipModel` (eval mode) from an authors' checkpoint, strictly; raises before touching any model."""
    state_dict, unprefixed = rename_original_state_dict(load_original_state_dict(checkpoint_path))
    model = ClipVipModel(config)
    check_state_dict(state_dict, model, unprefixed)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def config_from_original(clip_config: dict, vision_additional_config: dict | None = None) -> ClipVipConfig:
    """A `ClipVipConfig` from the authors' transformers-4.x `CLIPConfig` dict and their `vision_additional_config`."""
    extra = vision_additional_config or {}
    text = architecture_fields(clip_config["text_config"], ClipVipTextConfig)
    vision = architecture_fields(clip_config["vision_config"], ClipVipVisionConfig)
    # The authors' code never reads the token ids; drop defaults that do not fit a custom vocabulary.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if not isinstance(text.get(key), int) or text[key] >= text.get("vocab_size", 0):
            text[key] = None
    vision.update(
        num_proxies=int(extra.get("add_cls_num", 3)),
        num_frames=int(extra.get("temporal_size", 12)),
        use_temporal_embedding=bool(extra.get("if_use_temporal_embed", 1)),
    )
    return ClipVipConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=clip_config["projection_dim"],
        logit_scale_init_value=float(extra.get("logit_scale_init_value", 4.6)),
    )


def load_config(config_path: str | os.PathLike) -> ClipVipConfig:
    """A `ClipVipConfig` from a config folder or JSON file; an authors' CLIP config JSON is translated."""
    path = Path(config_path)
    json_path = path / "config.json" if path.is_dir() else path
    raw = json.loads(json_path.read_text())
    if raw.get("model_type") == "clip_vip":
        return ClipVipConfig.from_pretrained(path if path.is_dir() else json_path)
    if raw.get("model_type") == "clip" or "vision_additional_config" in raw:
        clip_config = raw.get("clip_config", raw)
        return config_from_original(clip_config, raw.get("vision_additional_config"))
    raise ValueError(f"{json_path} is neither a ClipVipConfig (model_type 'clip_vip') nor an authors' CLIP config.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the authors' .pt checkpoint")
    parser.add_argument("--config", required=True, help="a ClipVipConfig folder/JSON, or the authors' CLIP config JSON")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--tokenizer", help="a CLIP tokenizer folder: also save a ClipVipProcessor (for AutoProcessor, clip-vip push)"
    )
    args = parser.parse_args(argv)
    model = convert_original_checkpoint(args.checkpoint, load_config(args.config))
    processor = None
    if args.tokenizer:
        processor = ClipVipProcessor.for_config(model.config, AutoTokenizer.from_pretrained(args.tokenizer))
    model.save_pretrained(args.output)
    if processor is not None:
        processor.save_pretrained(args.output)
    print(f"Converted {args.checkpoint} -> {args.output}")


if __name__ == "__main__":
    main()
