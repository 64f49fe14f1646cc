"""Releasing to the Hub, against a fake Hub: what is uploaded, and what is refused before any upload."""

import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

from conftest import REPO_ROOT, TINY_CONFIG_DIR
from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from modeling_clip_vip.processing_clip_vip import ClipVipImageProcessor, ClipVipProcessor
from training import hub
from training.hub import ClipVipPushError, converted_provenance, push_model, render_model_card, write_model_card

CODE_FILES = {"configuration_clip_vip.py", "modeling_clip_vip.py", "processing_clip_vip.py"}
MODEL_CARD = REPO_ROOT / "MODEL_CARD.md"


class FakeHfApi:
    """Records every call; `upload_folder` keeps the relative paths it would have uploaded."""

    calls: list[tuple[str, dict]] = []
    uploaded: dict[str, bytes] = {}

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path, ignore_patterns=None, **kwargs):
        self.calls.append(("upload_folder", {"folder_path": folder_path, **kwargs}))
        root = Path(folder_path)
        paths = [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]
        for path in filter_repo_objects(paths, ignore_patterns=ignore_patterns):
            self.uploaded[path] = (root / path).read_bytes()
        return "commit-info"


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls, FakeHfApi.uploaded = [], {}
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    model_dir = tmp_path_factory.mktemp("release") / "clip-vip-tiny"
    ClipVipModel(ClipVipConfig.from_pretrained(TINY_CONFIG_DIR)).save_pretrained(model_dir)
    image_processor = ClipVipImageProcessor(size={"height": 64, "width": 64}, num_frames=4)
    ClipVipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(model_dir)
    return model_dir


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / model_dir.name))


def test_push_uploads_a_loadable_folder_with_code_weights_processor_and_card(fake_hub, saved_model, tmp_path):
    model_dir = copy_of(saved_model, tmp_path)
    (model_dir / "metrics.json").write_text(json.dumps({"eval_t2v_r1": 12.5, "eval_v2t_r1": 10.0}))
    (model_dir / "checkpoint-10").mkdir()
    (model_dir / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")

    push_model(model_dir, "someone/clip-vip-tiny", private=True, revision="v1", commit_message="First release")

    assert [name for name, _ in fake_hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub.calls[0][1]["private"] is True
    assert fake_hub.calls[2][1]["revision"] == "v1"
    assert fake_hub.calls[2][1]["commit_message"] == "First release"
    uploaded = fake_hub.uploaded
    config = json.loads(uploaded["config.json"])
    assert {"AutoConfig", "AutoModel"} <= set(config["auto_map"])
    assert "AutoProcessor" in json.loads(uploaded["processor_config.json"])["auto_map"]
    assert "model.safetensors" in uploaded and not any(path.endswith(".bin") for path in uploaded)
    assert CODE_FILES <= set(uploaded)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(uploaded)
    assert not any(path.startswith("checkpoint-") for path in uploaded)
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert "clip-vip" in card.data.tags and card.data.license == "mit"
    assert 'AutoModel.from_pretrained("someone/clip-vip-tiny", trust_remote_code=True)' in card.text
    assert "| text-to-video | R@1 | 12.50 |" in card.text


def test_a_folder_whose_weights_do_not_load_is_refused_before_any_upload(fake_hub, saved_model, tmp_path):
    model_dir = copy_of(saved_model, tmp_path)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(ClipVipPushError, match="does not load offline"):
        push_model(model_dir, "someone/clip-vip-tiny")
    assert fake_hub.calls == []


@pytest.mark.parametrize(
    ("remove", "reason"),
    [
        ("processor_config.json", "processor_config.json is missing"),
        ("tokenizer.json", "no tokenizer files"),
        ("modeling_clip_vip.py", "modeling_clip_vip.py .* is missing"),
        ("model.safetensors", "no safetensors weights"),
    ],
)
def test_an_incomplete_folder_is_refused_with_what_it_lacks(fake_hub, saved_model, tmp_path, remove, reason):
    model_dir = copy_of(saved_model, tmp_path)
    (model_dir / remove).unlink()

    with pytest.raises(ClipVipPushError, match=reason):
        push_model(model_dir, "someone/clip-vip-tiny")
    assert fake_hub.calls == []


def test_card_of_a_base_size_model_quotes_the_papers_results(tmp_path):
    shutil.copy(REPO_ROOT / "hub_configs" / "clip-vip-base-patch16" / "config.json", tmp_path / "config.json")
    card = ModelCard.load(write_model_card(tmp_path, repo_id="someone/clip-vip-b16"))

    assert card.text.lstrip().startswith("# CLIP-ViP ViT-B/16")
    assert "| MSR-VTT 1k-A | 54.2 / 77.2 / 84.8 | 57.7 |" in card.text
    assert "Evaluation of this checkpoint" not in card.text
    assert "year      = {2023}" in card.text


def test_committed_model_card_is_the_rendered_card_of_the_converted_b32_release():
    config = json.loads((REPO_ROOT / "hub_configs" / "clip-vip-base-patch32" / "config.json").read_text())
    provenance = converted_provenance("pretrain_clipvip_base_32.pt")
    card = render_model_card(config, provenance=provenance, base_model="openai/clip-vit-base-patch32")
    if os.environ.get("UPDATE_MODEL_CARD") == "1":
        MODEL_CARD.write_text(card, encoding="utf-8")
    assert MODEL_CARD.read_text(encoding="utf-8") == card, (
        "MODEL_CARD.md differs from what render_model_card writes; regenerate it with "
        "UPDATE_MODEL_CARD=1 python -m pytest tests/test_hub.py -k committed_model_card"
    )
    assert ModelCard(card).data.base_model == "openai/clip-vit-base-patch32"
