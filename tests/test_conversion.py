"""The converter is strict: every problem in a checkpoint is named, and nothing is written on error."""

import collections
import subprocess
import sys

import pytest
import torch

from conftest import OFFICIAL_TINY_DIR
from modeling_clip_vip.convert_clip_vip_original_to_hf import (
    CheckpointConversionError,
    convert_original_checkpoint,
    load_config,
)

pytestmark = pytest.mark.skipif(not OFFICIAL_TINY_DIR.is_dir(), reason="shared/fixtures/clipvip_official_tiny missing")
CONFIG_JSON = OFFICIAL_TINY_DIR / "config.json"


@pytest.fixture
def official_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL_TINY_DIR / "official_tiny.pt", map_location="cpu", weights_only=True)


def convert_with_cli(checkpoint, output_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable, "-m", "modeling_clip_vip.convert_clip_vip_original_to_hf",
            "--checkpoint", str(checkpoint), "--config", str(CONFIG_JSON), "--output", str(output_dir),
        ],
        capture_output=True,
        text=True,
    )


def save(state, path):
    torch.save(state, path)
    return path


def test_converter_names_every_missing_key(official_state_dict, tmp_path):
    del official_state_dict["clipmodel.vision_model.embeddings.added_cls"]
    del official_state_dict["clipmodel.text_model.final_layer_norm.bias"]
    checkpoint = save(official_state_dict, tmp_path / "missing.pt")
    with pytest.raises(CheckpointConversionError) as error:
        convert_original_checkpoint(checkpoint, load_config(CONFIG_JSON))
    message = str(error.value)
    assert "missing" in message
    assert "vision_model.embeddings.proxy_embedding" in message and "text_model.final_layer_norm.bias" in message
    result = convert_with_cli(checkpoint, tmp_path / "out")
    assert result.returncode != 0 and "text_model.final_layer_norm.bias" in result.stderr
    assert not (tmp_path / "out").exists()


def test_converter_names_unexpected_and_unprefixed_keys(official_state_dict, tmp_path):
    official_state_dict["clipmodel.vision_model.extra_head.weight"] = torch.zeros(3)
    official_state_dict["optimizer_step"] = torch.tensor(5)
    checkpoint = save(official_state_dict, tmp_path / "extra.pt")
    with pytest.raises(CheckpointConversionError) as error:
        convert_original_checkpoint(checkpoint, load_config(CONFIG_JSON))
    assert "unexpected in the checkpoint: ['vision_model.extra_head.weight']" in str(error.value)
    assert "optimizer_step" in str(error.value)


def test_converter_explains_a_proxy_count_mismatch(official_state_dict, tmp_path):
    official_state_dict["clipmodel.vision_model.embeddings.added_cls"] = torch.zeros(5, 64)
    official_state_dict["clipmodel.vision_model.embeddings.temporal_embedding"] = torch.zeros(1, 8, 64)
    checkpoint = save(official_state_dict, tmp_path / "shape.pt")
    with pytest.raises(CheckpointConversionError) as error:
        convert_original_checkpoint(checkpoint, load_config(CONFIG_JSON))
    message = str(error.value)
    assert "proxy_embedding has shape (5, 64) but the model expects (3, 64)" in message
    assert "the checkpoint has 5 proxies but the config says num_proxies=3" in message
    assert "temporal table has 8 frames but the config says num_frames=12" in message


def test_converter_accepts_the_data_parallel_prefix(official_state_dict, tmp_path):
    checkpoint = save({f"module.{key}": value for key, value in official_state_dict.items()}, tmp_path / "ddp.pt")
    model = convert_original_checkpoint(checkpoint, load_config(CONFIG_JSON))
    assert torch.equal(
        model.vision_model.embeddings.proxy_embedding, official_state_dict["clipmodel.vision_model.embeddings.added_cls"]
    )
    assert not model.training


def test_converter_refuses_position_ids_that_are_not_an_arange(official_state_dict, tmp_path):
    official_state_dict["clipmodel.text_model.embeddings.position_ids"] = torch.zeros(1, 32, dtype=torch.long)
    with pytest.raises(CheckpointConversionError, match="position_ids is expected to be a plain arange"):
        convert_original_checkpoint(save(official_state_dict, tmp_path / "ids.pt"), load_config(CONFIG_JSON))


def test_converter_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("these are not weights")
    with pytest.raises(CheckpointConversionError, match="is not a PyTorch checkpoint"):
        convert_original_checkpoint(not_a_checkpoint, load_config(CONFIG_JSON))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_original_checkpoint(tmp_path / "absent.pt", load_config(CONFIG_JSON))


class TrainingState:
    """An arbitrary pickled object: weights_only loading must refuse it."""

    def __init__(self):
        self.weights = {"w": torch.zeros(1)}


def test_converter_refuses_a_pickle_that_is_not_a_plain_state_dict(tmp_path):
    with pytest.raises(CheckpointConversionError, match="objects other than tensors"):
        convert_original_checkpoint(save(TrainingState(), tmp_path / "object.pt"), load_config(CONFIG_JSON))
    with pytest.raises(CheckpointConversionError, match="not a state dict"):
        convert_original_checkpoint(save([torch.zeros(1)], tmp_path / "list.pt"), load_config(CONFIG_JSON))
    nested = collections.OrderedDict(model={"clipmodel.logit_scale": torch.zeros(())})
    with pytest.raises(CheckpointConversionError, match=r"entries \['model'\] are not tensors"):
        convert_original_checkpoint(save(nested, tmp_path / "nested.pt"), load_config(CONFIG_JSON))
    result = convert_with_cli(tmp_path / "object.pt", tmp_path / "out")
    assert result.returncode != 0 and "objects other than tensors" in result.stderr
    assert not (tmp_path / "out").exists()
