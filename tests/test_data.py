"""Streamed video-text data: manifests and tar shards through a 2-worker DataLoader, bad samples, collation."""

import io
import json
import tarfile

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from modeling_clip_vip.processing_clip_vip import ClipVipImageProcessor, ClipVipProcessor
from training.data import (
    ClipVipBadSampleTracker,
    ClipVipCollator,
    TooManyBadSamplesError,
    build_video_text_dataset,
)
from training.video_fixtures import read_frame_index, write_video

NUM_FRAMES = 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Eight clips; clip i starts at frame 10 * i, so a decoded frame tells which clip it came from."""
    folder = tmp_path_factory.mktemp("videos")
    for i in range(8):
        write_video(folder / f"clip{i}.mp4", 6 + i, frame_fn=lambda index, i=i: _pattern(10 * i + index))
    return folder


def _pattern(index):
    from training.video_fixtures import index_pattern

    return index_pattern(index, (32, 32))


@pytest.fixture
def processor(tokenizer):
    return ClipVipProcessor(ClipVipImageProcessor(size={"height": 32, "width": 32}, num_frames=NUM_FRAMES), tokenizer)


def write_manifest(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def clip_of(sample) -> int:
    return read_frame_index(sample["frames"][0]) // 10


def epoch(dataset, **loader_kwargs) -> list[dict]:
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=lambda samples: samples, **loader_kwargs)
    return [sample for batch in loader for sample in batch]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_manifest_yields_every_clip_once_per_epoch_across_two_workers(videos, tmp_path, suffix):
    rows = [{"video": str(videos / f"clip{i}.mp4"), "text": f"red {i}", "caption": "a circle"} for i in range(8)]
    manifest = write_manifest(tmp_path / f"train{suffix}", rows)
    dataset = build_video_text_dataset(manifest, NUM_FRAMES, mode="jitter", num_parts=4, shuffle_buffer_size=4)
    for epoch_index in range(2):
        dataset.set_epoch(epoch_index)
        samples = epoch(dataset)
        assert sorted(clip_of(s) for s in samples) == list(range(8))
        assert all(s["texts"] == [f"red {clip_of(s)}"] and s["caption"] == "a circle" for s in samples)
        assert all(s["frames"].shape == (NUM_FRAMES, 32, 32, 3) for s in samples)


def test_manifest_paths_are_relative_to_its_folder_and_columns_configurable(videos):
    rows = [{"clip": f"clip{i}.mp4", "sentence": "blue"} for i in range(3)]
    manifest = write_manifest(videos / "relative.jsonl", rows)
    dataset = build_video_text_dataset(manifest, NUM_FRAMES, video_column="clip", text_column="sentence", num_parts=2)
    assert sorted(clip_of(s) for s in epoch(dataset)) == [0, 1, 2]


def write_shard(path, clips, videos):
    with tarfile.open(path, "w") as tar:
        for i in clips:
            members = {
                f"sample{i}.mp4": (videos / f"clip{i}.mp4").read_bytes(),
                f"sample{i}.json": json.dumps({"text": f"green {i}", "caption": "a square"}).encode(),
            }
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_tar_shards_yield_every_clip_once_per_epoch_across_two_workers(videos, tmp_path):
    shards = [write_shard(tmp_path / f"shard{s}.tar", range(2 * s, 2 * s + 2), videos) for s in range(4)]
    dataset = build_video_text_dataset(shards, NUM_FRAMES, mode="uniform")
    samples = epoch(dataset)
    assert sorted(clip_of(s) for s in samples) == list(range(8))
    assert all(s["texts"] == [f"green {clip_of(s)}"] and s["caption"] == "a square" for s in samples)


def test_collated_batches_have_the_model_shapes(videos, tmp_path, processor):
    rows = [{"video": f"clip{i}.mp4", "text": "red", "caption": "a circle"} for i in range(6)]
    dataset = build_video_text_dataset(write_manifest(videos / "shapes.jsonl", rows), NUM_FRAMES, num_parts=2)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=ClipVipCollator(processor, max_length=16))
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["pixel_values"].shape == (3, NUM_FRAMES, 3, 32, 32)
        assert batch["frame_pixel_values"].shape == (3, 1, 3, 32, 32)
        assert batch["input_ids"].shape == batch["caption_input_ids"].shape == (3, 16)
        assert batch["text_video_index"].tolist() == [0, 1, 2] and batch["num_skipped"] == 0


def test_evaluation_keeps_every_text_and_maps_it_to_its_clip(videos, processor):
    rows = [{"video": "clip0.mp4", "text": ["red", "a red circle"]}, {"video": "clip1.mp4", "text": "blue"}]
    dataset = build_video_text_dataset(write_manifest(videos / "eval.jsonl", rows), NUM_FRAMES, mode="uniform", num_parts=1)
    batch = ClipVipCollator(processor)(list(dataset))
    assert batch["text_video_index"].tolist() == [0, 0, 1]
    assert batch["input_ids"].shape[0] == 3 and "caption_input_ids" not in batch


def write_bad_inputs(folder):
    (folder / "empty.mp4").write_bytes(b"")
    data = (folder / "clip7.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "garbage.mp4").write_bytes(bytes(range(256)) * 20)
    from test_processing import write_audio_only

    write_audio_only(folder / "audio.m4a")
    return [
        {"video": "missing.mp4", "text": "red"},
        {"video": "empty.mp4", "text": "red"},
        {"video": "truncated.mp4", "text": "red"},
        {"video": "garbage.mp4", "text": "red"},
        {"video": "audio.m4a", "text": "red"},
        {"video": "clip0.mp4", "text": ""},
        {"video": "clip0.mp4", "text": 7},
        {"video": "clip0.mp4", "text": None},
    ]


def test_each_kind_of_bad_sample_is_skipped_warned_and_counted(videos, processor, caplog):
    bad = write_bad_inputs(videos)
    good = [{"video": f"clip{i}.mp4", "text": "red"} for i in range(8)]
    # Rows go to parts by index modulo 2: in each part every bad row is followed by a good one, whose
    # sample carries its count.
    rows = [row for k in range(0, 8, 2) for row in bad[k : k + 2] + good[k : k + 2]]
    dataset = build_video_text_dataset(write_manifest(videos / "bad.jsonl", rows), NUM_FRAMES, num_parts=2)
    tracker = ClipVipBadSampleTracker(max_bad_fraction=0.6, min_samples=4)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=ClipVipCollator(processor))
    for batch in loader:
        tracker.update_from_batch(batch)
        assert "num_skipped" not in batch
    assert (tracker.num_good, tracker.num_bad) == (8, 8)

    caplog.clear()
    with caplog.at_level("WARNING"):
        samples = list(build_video_text_dataset(videos / "bad.jsonl", NUM_FRAMES, num_parts=1))
    assert [s["num_skipped"] for s in samples] == [2, 0] * 4
    for name in ("missing.mp4", "empty.mp4", "truncated.mp4", "garbage.mp4", "audio.m4a"):
        assert any(name in record.getMessage() for record in caplog.records)


def test_too_many_bad_samples_abort_with_a_clear_error(videos):
    rows = [{"video": "missing.mp4", "text": "red"}] * 6 + [{"video": "clip0.mp4", "text": "red"}] * 2
    dataset = build_video_text_dataset(
        write_manifest(videos / "mostly_bad.jsonl", rows), NUM_FRAMES, num_parts=2, max_bad_fraction=0.5, min_samples=3
    )
    with pytest.raises(TooManyBadSamplesError, match="max_bad_fraction"):
        epoch(dataset)

    tracker = ClipVipBadSampleTracker(max_bad_fraction=0.25, min_samples=4)
    tracker.update_from_batch({"pixel_values": torch.zeros(3, 1), "num_skipped": torch.tensor(0)})
    with pytest.raises(TooManyBadSamplesError, match="2 of 5 samples were bad"):
        tracker.update_from_batch({"pixel_values": torch.zeros(0, 1), "num_skipped": torch.tensor(2)})
