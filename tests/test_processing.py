"""Video decoding, frame sampling (SPEC §5) and the processor, on videos written here with PyAV."""

import io
import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import offline_env
from modeling_clip_vip.processing_clip_vip import (
    ClipVipImageProcessor,
    ClipVipProcessor,
    VideoDecodeError,
    decode_video,
    sample_frame_indices,
)
from training.video_fixtures import read_frame_index, write_video

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frame_indices(frames) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


# (file name, codec, pix_fmt, size, frames, extra write_video arguments)
CLIPS = {
    "h264_mp4": ("clip.mp4", "libx264", "yuv420p", (32, 32), 40, {}),
    "h264_short_gop_mp4": ("clip.mp4", "libx264", "yuv420p", (32, 32), 120, {"gop_size": 4}),
    "mpeg4_avi_odd_size": ("clip.avi", "mpeg4", "yuv420p", (33, 17), 30, {}),
    "vp9_webm_no_frame_count": ("clip.webm", "libvpx-vp9", "yuv420p", (48, 32), 30, {}),
    "h264_mkv_odd_size": ("clip.mkv", "libx264", "yuv444p", (35, 21), 25, {"gop_size": 3}),
    "mpeg4_ts": ("clip.ts", "mpeg4", "yuv420p", (32, 32), 30, {}),
    "variable_frame_rate_mp4": ("clip.mp4", "libx264", "yuv420p", (32, 32), 20, {"frame_times": [0.01 * i * i for i in range(20)]}),
    "single_frame": ("clip.mp4", "libx264", "yuv420p", (32, 32), 1, {}),
    "three_frames": ("clip.mp4", "libx264", "yuv420p", (32, 32), 3, {}),
}


@pytest.fixture(params=list(CLIPS))
def clip(request, tmp_path):
    name, codec, pix_fmt, size, num_frames, extra = CLIPS[request.param]
    path = write_video(tmp_path / name, num_frames, size=size, codec=codec, pix_fmt=pix_fmt, **extra)
    return path, num_frames, size


def test_uniform_sampling_is_floored_linspace():
    for n, t in [(100, 12), (12, 12), (7, 12), (300, 8)]:
        assert sample_frame_indices(n, t, "uniform") == [int(x) for x in np.floor(np.linspace(0, n - 1, t))]


def test_jitter_sampling_stays_in_the_windows_of_the_spec():
    n, t = 100, 12
    k = int(n / (t - 1))
    starts, ends = set(), set()
    for seed in range(200):
        indices = sample_frame_indices(n, t, "jitter", seed)
        assert indices == sorted(indices) and len(indices) == t
        assert 0 <= indices[0] <= k and n - 1 - k <= indices[-1] <= n - 1
        starts.add(indices[0])
        ends.add(indices[-1])
        assert indices == [int(x) for x in np.linspace(indices[0], indices[-1], t)]
    assert starts == set(range(k + 1)) and ends == set(range(n - 1 - k, n))
    assert sample_frame_indices(n, t, "jitter", 3) == sample_frame_indices(n, t, "jitter", 3)


def test_single_frame_sampling_takes_the_middle_frame_when_evaluating():
    assert sample_frame_indices(9, 1, "uniform") == [4]
    assert all(0 <= sample_frame_indices(9, 1, "jitter", seed)[0] < 9 for seed in range(20))


def test_decoded_frames_are_the_sampled_ones(clip):
    path, num_frames, (width, height) = clip
    for mode, seed in [("uniform", None), ("jitter", 0), ("jitter", 1)]:
        video = decode_video(path, 8, mode=mode, seed=seed)
        assert video.num_source_frames == num_frames
        assert video.indices == sample_frame_indices(num_frames, 8, mode, seed)
        assert video.frames.shape == (8, height, width, 3) and video.frames.dtype == np.uint8
        assert frame_indices(video.frames) == video.indices
        assert video.middle_index == num_frames // 2
        assert read_frame_index(video.middle_frame) == num_frames // 2


def test_container_without_frame_count_is_counted(tmp_path):
    path = write_video(tmp_path / "clip.webm", 30, codec="libvpx-vp9")
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0
    assert decode_video(path, 4).num_source_frames == 30


def test_bytes_and_file_objects_decode_like_paths(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 20)
    expected = decode_video(path, 5).frames
    data = open(path, "rb").read()
    np.testing.assert_array_equal(decode_video(data, 5).frames, expected)
    with open(path, "rb") as file:
        np.testing.assert_array_equal(decode_video(file, 5).frames, expected)
    np.testing.assert_array_equal(decode_video(io.BytesIO(data), 5).frames, expected)


def write_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "audio_only", "empty_bytes"])
def test_bad_videos_raise_an_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(write_video(tmp_path / "full.mp4", 30), "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "audio_only":
        path = write_audio_only(tmp_path / "audio.m4a")
    source = b"" if kind == "empty_bytes" else path
    with pytest.raises(VideoDecodeError) as error:
        decode_video(source, 4)
    if kind != "empty_bytes":
        assert str(path) in str(error.value)


def solid_video(values: list[int], size=(40, 30)) -> np.ndarray:
    width, height = size
    return np.stack([np.full((height, width, 3), value, dtype=np.uint8) for value in values])


def test_processor_squashes_rescales_and_normalises_with_clip_statistics():
    processor = ClipVipImageProcessor(size={"height": 64, "width": 64})
    pixel_values = processor(videos=[solid_video([0, 128, 255]), solid_video([10, 20, 30])])["pixel_values"]
    assert pixel_values.shape == (2, 3, 3, 64, 64) and pixel_values.dtype == torch.float32
    for channel in range(3):
        expected = (128 / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        torch.testing.assert_close(pixel_values[0, 1, channel], torch.full((64, 64), expected))


def test_shortest_edge_and_center_crop_keep_the_aspect():
    frames = np.zeros((2, 30, 60, 3), dtype=np.uint8)
    frames[:, :, 15:45] = 255  # a white centre square
    processor = ClipVipImageProcessor(do_center_crop=True, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixel_values = processor(videos=frames)["pixel_values"]
    assert pixel_values.shape == (1, 2, 3, 32, 32)
    white = (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.allclose(pixel_values[0, 0, 0, :, 4:28], torch.tensor(white), atol=1e-5)


def test_processor_accepts_paths_bytes_files_arrays_and_pil_frames(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 16)
    processor = ClipVipImageProcessor(size={"height": 32, "width": 32}, num_frames=4)
    frames = decode_video(path, 4).frames
    expected = processor(videos=frames)["pixel_values"]
    with open(path, "rb") as file:
        inputs = [path, open(path, "rb").read(), file, list(frames), [Image.fromarray(f) for f in frames]]
        for video in inputs:
            torch.testing.assert_close(processor(videos=video)["pixel_values"], expected)
    assert processor(images=Image.fromarray(frames[0]))["pixel_values"].shape == (1, 3, 32, 32)


def test_processor_pads_and_truncates_text_to_max_length(tokenizer):
    processor = ClipVipProcessor(ClipVipImageProcessor(), tokenizer, max_length=8)
    tokens = processor(text=["a red circle", "a red circle moves left right up down and disappears"])
    assert tokens["input_ids"].shape == (2, 8) and tokens["attention_mask"][0].sum() == 5
    assert tokens["input_ids"][1, -1] == tokenizer.eos_token_id
    assert processor(text="a", max_length=12)["input_ids"].shape == (1, 12)


ROUND_TRIP_SCRIPT = """
import json, sys, torch
from transformers import AutoModel, AutoProcessor
directory, video = sys.argv[1], sys.argv[2]
processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
inputs = processor(text=["a red circle"], videos=[video])
with torch.no_grad():
    video_embeds = model.get_video_features(pixel_values=inputs["pixel_values"]).pooler_output
    text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
torch.save({"type": type(processor).__name__, **inputs, "video_embeds": video_embeds, "text_embeds": text_embeds}, sys.argv[3])
"""


def test_processor_round_trip_with_a_model_in_a_fresh_offline_process(tmp_path, tiny_config, tokenizer):
    from modeling_clip_vip.modeling_clip_vip import ClipVipModel

    torch.manual_seed(0)
    model = ClipVipModel(tiny_config).eval()
    size = tiny_config.vision_config.image_size
    num_frames = tiny_config.vision_config.num_frames
    processor = ClipVipProcessor(ClipVipImageProcessor(size={"height": size, "width": size}, num_frames=num_frames), tokenizer)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert "AutoProcessor" in json.loads((tmp_path / "model" / "processor_config.json").read_text())["auto_map"]
    video = write_video(tmp_path / "clip.mp4", 24, size=(48, 40))

    subprocess.run(
        [sys.executable, "-c", ROUND_TRIP_SCRIPT, str(tmp_path / "model"), video, str(tmp_path / "out.pt")],
        check=True, cwd=tmp_path, env=offline_env(),
    )
    loaded = torch.load(tmp_path / "out.pt")
    inputs = processor(text=["a red circle"], videos=[video])
    with torch.no_grad():
        video_embeds = model.get_video_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_embeds = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    assert loaded["type"] == "ClipVipProcessor"
    for key in ("pixel_values", "input_ids", "attention_mask"):
        torch.testing.assert_close(loaded[key], inputs[key])
    torch.testing.assert_close(loaded["video_embeds"], video_embeds)
    torch.testing.assert_close(loaded["text_embeds"], text_embeds)
