"""`clip-vip caption`: middle-frame captions as OCL's source C, resumable, bad clips listed, trainable output."""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from training.caption import CaptionArguments, ClipVipCaptioner, caption_manifest
from training.cli import main
from training.synthetic_data import generate_moving_shapes
from training.train import DataArguments, ModelArguments, train
from training.trainer import ClipVipTrainingArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = "a the red green blue circle square triangle on left right of grey frame near top bottom".split()
NUM_CLIPS = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Ops on these tiny tensors take microseconds; on a loaded 2-core machine the threads' handshakes take ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory) -> Path:
    """A tiny BLIP captioner with random weights, its WordPiece tokenizer and the Pillow image processor."""
    folder = tmp_path_factory.mktemp("tiny_blip")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=32)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, bos_token_id=vocab["[DEC]"], pad_token_id=0,
            eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64),
        projection_dim=32, image_text_hidden_size=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return generate_moving_shapes(tmp_path_factory.mktemp("shapes"), NUM_CLIPS, 0, size=32, num_frames=8)["train"]


def caption_args(manifest: Path, output: Path, model: Path, **overrides) -> CaptionArguments:
    options = dict(batch_size=4, chunk_size=4, max_words=3, max_new_tokens=6, num_workers=2)
    return CaptionArguments([str(manifest)], str(output), str(model), **{**options, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decoded_middle_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return frames[len(frames) // 2]


def test_command_captions_every_clip_from_its_middle_frame_within_the_word_limit(
    manifest, captioner_dir, tmp_path, monkeypatch, capsys
):
    seen = []
    original_call = ClipVipCaptioner.__call__

    def recording_call(self, frames):
        seen.extend(frames)
        return original_call(self, frames)

    monkeypatch.setattr(ClipVipCaptioner, "__call__", recording_call)
    output = tmp_path / "out" / "captioned.jsonl"
    main([
        "caption", "--input_file", str(manifest), "--output_file", str(output), "--model_name_or_path",
        str(captioner_dir), "--max_words", "3", "--max_new_tokens", "6", "--batch_size", "4", "--chunk_size", "5",
    ])
    assert f"{NUM_CLIPS} clips captioned, 0 skipped" in capsys.readouterr().out

    originals, rows = read_jsonl(manifest), read_jsonl(output)
    assert len(rows) == NUM_CLIPS
    for original, row, frame in zip(originals, rows, seen, strict=True):
        video = (output.parent / row["video"]).resolve()
        assert video == (manifest.parent / original["video"]).resolve()
        np.testing.assert_array_equal(frame, decoded_middle_frame(video))
        assert {k: v for k, v in row.items() if k not in ("video", "caption")} == {
            k: v for k, v in original.items() if k not in ("video", "caption")
        }
        words = row["caption"].split()
        assert 1 <= len(words) <= 3 and set(words) <= set(WORDS)
    # Six new tokens of a word vocabulary make longer captions than three words: the limit did cut them.
    assert any(len(row["caption"].split()) == 3 for row in rows)
    assert not (output.parent / "captioned.jsonl.parts").exists()


def test_parquet_output_trains_as_the_caption_source(manifest, captioner_dir, tmp_path):
    output = tmp_path / "captioned.parquet"
    summary = caption_manifest(caption_args(manifest, output, captioner_dir))
    assert (summary.num_captioned, summary.num_skipped) == (NUM_CLIPS, 0)
    assert pq.read_table(output).column("caption").to_pylist() != [row["caption"] for row in read_jsonl(manifest)]

    trainer = train(
        ModelArguments(config_name="clip-vip-tiny", build_tokenizer_from_data=True),
        DataArguments(train_file=[str(output)], num_frames=2, num_parts=1, shuffle_buffer_size=0),
        ClipVipTrainingArguments(
            output_dir=str(tmp_path / "model"), ocl="v-sc,f-c", max_steps=2, per_device_train_batch_size=4,
            report_to="none", dataloader_num_workers=0, save_strategy="no", logging_steps=1,
        ),
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert trainer.bad_samples.num_bad == 0
    assert (tmp_path / "model" / "config.json").is_file()


KILLED_RUN = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import training.caption as caption

    write = caption._write_atomically
    def write_then_die(path, lines):
        if Path(path).name == "part-000002.jsonl":  # die half-way through writing the third part
            Path(path).with_name(f".{Path(path).name}.tmp").write_text("".join(lines)[:50])
            os._exit(9)
        write(path, lines)
    caption._write_atomically = write_then_die
    caption.caption_manifest(caption.CaptionArguments(sys.argv[1:2], sys.argv[2], sys.argv[3], batch_size=2,
                             chunk_size=4, max_words=3, max_new_tokens=6))
""")


def test_a_run_killed_mid_write_resumes_and_writes_every_clip_exactly_once(manifest, captioner_dir, tmp_path):
    output = tmp_path / "captioned.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(manifest), str(output), str(captioner_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr[-3000:]
    parts = tmp_path / "captioned.jsonl.parts"
    assert sorted(p.name for p in parts.glob("part-*")) == ["part-000000.jsonl", "part-000001.jsonl"]
    assert not output.exists()

    summary = caption_manifest(caption_args(manifest, output, captioner_dir, batch_size=2))
    assert summary.num_resumed == 8 and summary.num_captioned == NUM_CLIPS
    videos = [row["video"] for row in read_jsonl(output)]
    assert videos == [os.path.relpath(manifest.parent / row["video"], tmp_path) for row in read_jsonl(manifest)]
    assert not parts.exists()


def test_resuming_with_other_settings_is_refused(manifest, captioner_dir, tmp_path):
    parts = tmp_path / "captioned.jsonl.parts"
    parts.mkdir()
    (parts / "progress.json").write_text(json.dumps({"chunk_size": 1000}))
    with pytest.raises(ValueError, match="other settings"):
        caption_manifest(caption_args(manifest, tmp_path / "captioned.jsonl", captioner_dir))


def test_bad_clips_in_tar_shards_are_skipped_and_listed_with_the_reason(manifest, captioner_dir, tmp_path):
    originals = read_jsonl(manifest)[:3]
    samples = {f"clip{i}": ((manifest.parent / r["video"]).read_bytes(), r["text"]) for i, r in enumerate(originals)}
    samples["truncated"] = (samples["clip0"][0][:300], "cut off")
    samples["noise"] = (b"not a video at all" * 20, "noise")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as archive:
        for key, (video, text) in samples.items():
            for name, data in ((f"{key}.mp4", video), (f"{key}.json", json.dumps({"text": text}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))

    output = tmp_path / "out" / "captioned.jsonl"
    summary = caption_manifest(caption_args(shard, output, captioner_dir))
    assert (summary.num_captioned, summary.num_skipped) == (3, 2)
    skipped = read_jsonl(Path(summary.skipped_file))
    assert [entry["name"] for entry in skipped] == [f"{shard}:truncated.mp4", f"{shard}:noise.mp4"]
    assert all(entry["reason"] for entry in skipped)
    rows = read_jsonl(output)
    assert [row["text"] for row in rows] == [row["text"] for row in originals]
    for row, (video, _) in zip(rows, list(samples.values())[:3]):
        assert (output.parent / row["video"]).read_bytes() == video


def test_manifest_rows_without_a_readable_video_are_skipped_and_listed(manifest, captioner_dir, tmp_path):
    good = read_jsonl(manifest)[:2]
    rows = [
        {**good[0], "video": str((manifest.parent / good[0]["video"]).resolve())},
        {"video": "missing.mp4", "text": "gone"},
        {"video": None, "text": "no video"},
        {**good[1], "video": str((manifest.parent / good[1]["video"]).resolve())},
    ]
    bad_manifest = tmp_path / "with_bad.jsonl"
    bad_manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "captioned.jsonl"
    summary = caption_manifest(caption_args(bad_manifest, output, captioner_dir))
    assert (summary.num_captioned, summary.num_skipped) == (2, 2)
    assert [row["video"] for row in read_jsonl(output)] == [rows[0]["video"], rows[3]["video"]]  # absolute stay so
    skipped = read_jsonl(Path(summary.skipped_file))
    assert [entry["name"] for entry in skipped] == [str(tmp_path / "missing.mp4"), f"{bad_manifest} row 2: no 'video'"]
