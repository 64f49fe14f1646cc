"""`clip-vip index`, `search`, `classify` and `push`, end to end on generated clips with a tiny random model."""

import io
import json
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_CONFIG_DIR
from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from modeling_clip_vip.processing_clip_vip import ClipVipImageProcessor, ClipVipProcessor
from test_hub import fake_hub  # noqa: F401  (the fake Hub fixture)
from training.cli import main
from training.synthetic_data import generate_moving_shapes
from training.video_search import SKIPPED_FILE

NUM_GOOD_CLIPS = 8
LABELS = ["red circle", "blue square", "green circle"]


def run_cli(*argv: str) -> str:
    """Run `clip-vip ARGV...` in this process; returns what it printed."""
    out = io.StringIO()
    with redirect_stdout(out):
        main([str(arg) for arg in argv])
    return out.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random model with its processor. Its encoder weights are drawn wider than CLIP's initialisation:
    at that scale two random layers give every clip nearly the same embedding (cosine > 0.99999)."""
    torch.manual_seed(0)
    model = ClipVipModel(ClipVipConfig.from_pretrained(TINY_CONFIG_DIR))
    with torch.no_grad():
        for module in model.vision_model.encoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("model") / "clip-vip-tiny"
    model.save_pretrained(folder)
    image_processor = ClipVipImageProcessor(size={"height": 64, "width": 64}, num_frames=4)
    ClipVipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Generated clips plus three bad rows: a missing file, a truncated file, and a row without a video."""
    folder = tmp_path_factory.mktemp("clips")
    manifest = generate_moving_shapes(folder, num_train=NUM_GOOD_CLIPS, num_test=0, size=32, num_frames=8)["train"]
    good = (folder / "train" / "train00000.mp4").read_bytes()
    (folder / "train" / "truncated.mp4").write_bytes(good[: len(good) // 4])
    with open(manifest, "a") as handle:
        for row in ({"video": "train/missing.mp4"}, {"video": "train/truncated.mp4"}, {"text": "no video here"}):
            handle.write(json.dumps(row) + "\n")
    return manifest


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model_dir, manifest) -> tuple[Path, str]:
    index_dir = tmp_path_factory.mktemp("index") / "store"
    printed = run_cli("index", "--input_path", manifest, "--model_dir", model_dir, "--output_dir", index_dir,
                      "--batch_size", 3)
    return index_dir, printed


def printed_hits(printed: str) -> list[tuple[int, float, str]]:
    """`(rank, score, video)` of each result line `clip-vip search` printed."""
    return [(int(rank), float(score), video)
            for rank, score, video in re.findall(r"(\d+)  (-?\d\.\d{4})  (\S+)$", printed, re.MULTILINE)]


def good_clips(manifest: Path) -> list[str]:
    return [str(manifest.parent / "train" / f"train{row:05d}.mp4") for row in range(NUM_GOOD_CLIPS)]


@torch.no_grad()
def embeddings(model_dir: Path, texts: list[str] | None = None, videos: list[str] | None = None) -> torch.Tensor:
    """Normalised embeddings straight from the model, for comparison with what the commands find."""
    model = ClipVipModel.from_pretrained(model_dir).eval()
    inputs = ClipVipProcessor.from_pretrained(model_dir)(text=texts, videos=videos)
    if texts is not None:
        features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    else:
        features = model.get_video_features(pixel_values=inputs["pixel_values"])
    return F.normalize(features.pooler_output, dim=-1)


def test_index_embeds_the_good_clips_and_lists_the_bad_ones_with_reasons(indexed, manifest):
    index_dir, printed = indexed

    assert f"{NUM_GOOD_CLIPS} videos indexed (flat), 3 skipped" in printed
    skipped = [json.loads(line) for line in (index_dir / SKIPPED_FILE).read_text().splitlines()]
    assert [entry["video"] for entry in skipped[:2]] == [
        str(manifest.parent / "train" / "missing.mp4"), str(manifest.parent / "train" / "truncated.mp4")
    ]
    assert skipped[0]["reason"] == "file not found"
    assert "row 10" in skipped[2]["video"] and skipped[2]["reason"] == "no video"
    settings = json.loads((index_dir / "video_index.json").read_text())
    assert settings["num_videos"] == NUM_GOOD_CLIPS and settings["num_frames"] == 4
    assert not list(index_dir.glob(".embedding-*")), "the temporary Arrow cache must be cleaned up"


def test_a_clip_is_its_own_nearest_neighbour(indexed, manifest, tmp_path):
    index_dir, _ = indexed
    for clip in good_clips(manifest)[:3]:
        output_file = tmp_path / "hits.json"
        run_cli("search", "--index_dir", index_dir, "--video", clip, "--top_k", 3, "--output_file", output_file)
        results = json.loads(output_file.read_text())["results"]
        assert results[0]["video"] == clip
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert results[1]["score"] < 0.999, "other clips must not tie with the query itself"

    printed = run_cli("search", "--index_dir", index_dir, "--video", good_clips(manifest)[0], "--top_k", 3,
                      "--exclude_query")
    hits = printed_hits(printed)
    assert [rank for rank, _, _ in hits] == [1, 2, 3]
    assert good_clips(manifest)[0] not in [video for _, _, video in hits]


def test_text_search_through_the_reopened_index_ranks_as_exact_search_does(indexed, model_dir, manifest, tmp_path):
    index_dir, _ = indexed
    query = "a red circle moves left"
    output_file = tmp_path / "hits.json"

    printed = run_cli("search", "--index_dir", index_dir, "--text", query, "--top_k", 5, "--output_file", output_file)

    clips = good_clips(manifest)
    similarities = (embeddings(model_dir, texts=[query]) @ embeddings(model_dir, videos=clips).T)[0]
    expected = similarities.argsort(descending=True)[:5].tolist()
    results = json.loads(output_file.read_text())
    assert results["query"] == {"text": query}
    assert [hit["rank"] for hit in results["results"]] == [1, 2, 3, 4, 5]
    assert [hit["video"] for hit in results["results"]] == [clips[row] for row in expected]
    torch.testing.assert_close(torch.tensor([hit["score"] for hit in results["results"]]), similarities[expected])
    assert [(rank, video) for rank, _, video in printed_hits(printed)] == [
        (rank, clips[row]) for rank, row in enumerate(expected, 1)
    ]


def test_index_of_a_folder_takes_every_video_file_under_it(model_dir, manifest, tmp_path):
    printed = run_cli("index", "--input_path", manifest.parent, "--model_dir", model_dir, "--output_dir",
                      tmp_path / "store", "--index_type", "ivf")

    assert f"{NUM_GOOD_CLIPS} videos indexed (ivf), 1 skipped" in printed
    assert json.loads((tmp_path / "store" / SKIPPED_FILE).read_text())["video"].endswith("truncated.mp4")



def test_an_input_without_a_single_good_clip_is_refused_with_the_skipped_list(model_dir, manifest, tmp_path):
    bad_manifest = manifest.parent / "bad.jsonl"
    bad_manifest.write_text(json.dumps({"video": "train/missing.mp4"}) + "\n")

    with pytest.raises(ValueError, match="no video .* could be embedded; 1 skipped"):
        run_cli("index", "--input_path", bad_manifest, "--model_dir", model_dir, "--output_dir", tmp_path / "store")
    assert json.loads((tmp_path / "store" / SKIPPED_FILE).read_text())["reason"] == "file not found"

def test_classify_scores_each_label_in_order_and_sums_to_one(model_dir, manifest, tmp_path):
    clips = good_clips(manifest)[:2]
    output_file = tmp_path / "scores.json"
    printed = run_cli("classify", "--model_dir", model_dir, "--video", *clips, "--labels", ",".join(LABELS),
                      "--template", "a {} moves", "--output_file", output_file)

    report = json.loads(output_file.read_text())
    assert report["labels"] == LABELS
    assert [result["video"] for result in report["results"]] == clips
    for result in report["results"]:
        assert list(result["scores"]) == LABELS
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == max(result["scores"], key=result["scores"].get)
    assert re.findall(r"^  \d\.\d{4}  (.+)$", printed, re.MULTILINE) == LABELS * len(clips)

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(reversed(LABELS)) + "\n")
    run_cli("classify", "--model_dir", model_dir, "--video", *clips, "--labels_file", labels_file,
            "--template", "a {} moves", "--output_file", output_file)
    reversed_report = json.loads(output_file.read_text())
    for before, after in zip(report["results"], reversed_report["results"]):
        assert list(after["scores"]) == LABELS[::-1]
        assert after["scores"] == pytest.approx(before["scores"], abs=1e-6)


def test_push_uploads_a_converted_model_with_its_card(fake_hub, model_dir, tmp_path):
    folder = Path(shutil.copytree(model_dir, tmp_path / "release"))

    printed = run_cli("push", "--model_dir", folder, "--repo_id", "someone/clip-vip-tiny", "--private",
                      "--revision", "v1", "--converted_from", "pretrain_clipvip_base_32.pt")

    assert "Pushed" in printed and "someone/clip-vip-tiny" in printed
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub.calls[0][1]["private"] is True
    uploaded = set(fake_hub.uploaded)
    assert {"config.json", "model.safetensors", "modeling_clip_vip.py", "processor_config.json"} <= uploaded
    card = fake_hub.uploaded["README.md"].decode()
    assert "`pretrain_clipvip_base_32.pt`" in card and "convert_clip_vip_original_to_hf.py" in card


def test_push_refuses_a_folder_that_does_not_load_says_why_and_uploads_nothing(fake_hub, model_dir, tmp_path, capsys):
    folder = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(SystemExit) as refused:
        run_cli("push", "--model_dir", folder, "--repo_id", "someone/clip-vip-tiny")

    assert refused.value.code != 0
    message = str(refused.value.code)
    assert "nothing was uploaded" in message and "does not load offline" in message and str(folder) in message
    assert fake_hub.calls == []
