"""Video decoding, frame sampling and preprocessing for CLIP-ViP, and the processor pairing it with CLIP's tokenizer.

- `decode_video` decodes a clip with PyAV and returns the `T` sampled frames (SPEC §5) and the middle frame
  (the `F` source), with the indices used. Other commands (training data, captioning, indexing) reuse it.
- `ClipVipImageProcessor` resizes, rescales and normalises frames in plain torch (no torchvision, which
  cannot be imported next to this torch build); it lives on `BaseImageProcessor` so that it saves and loads
  like transformers' own image processors.
- `ClipVipProcessor` holds it in the `image_processor` slot next to the tokenizer (as X-CLIP's processor
  does) and loads through `AutoProcessor.from_pretrained(..., trust_remote_code=True)`.
"""

import bisect
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from av.video.reformatter import VideoReformatter
from PIL import Image
from transformers import AutoTokenizer, BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ProcessorMixin

VideoSource = str | os.PathLike | bytes | BinaryIO
SamplingMode = Literal["uniform", "jitter"]

# Seeking to a keyframe pays only when it skips at least this many frames of decoding: a seek flushes the
# decoder and re-reads from the keyframe, so with long GOPs decoding straight through is cheaper.
MIN_FRAMES_SKIPPED_BY_SEEK = 16


class VideoDecodeError(ValueError):
    """A video that cannot be used: missing, empty, truncated, undecodable, or without a video stream."""

    def __init__(self, source_name: str, reason: str):
        super().__init__(f"{source_name}: {reason}")
        self.source_name = source_name
        self.reason = reason


@dataclass
class DecodedVideo:
    """Frames sampled from one clip.

    Attributes:
        frames: `(T, H, W, 3)` uint8 RGB, in temporal order (repeated when the clip has fewer than `T` frames).
        middle_frame: `(H, W, 3)` uint8 RGB, frame `num_source_frames // 2`, or None when not asked for.
        indices: the source frame index of each of the `T` frames.
        middle_index: `num_source_frames // 2`.
        num_source_frames: frames in the clip, counted from its packets (not from container metadata).
    """

    frames: np.ndarray
    middle_frame: np.ndarray | None
    indices: list[int]
    middle_index: int
    num_source_frames: int


def sample_frame_indices(
    num_source_frames: int,
    num_frames: int,
    mode: SamplingMode = "uniform",
    seed: int | np.random.Generator | None = None,
) -> list[int]:
    """Indices of the `num_frames` frames to take from a clip of `num_source_frames` frames (SPEC §5).

    `"uniform"` (evaluation): `linspace(0, n-1, T)` rounded down. `"jitter"` (training): `k = int(n / (T-1))`,
    `start ~ U{0..k}`, `end ~ U{n-1-k..n-1}`, `linspace(start, end, T)` rounded down. Short clips repeat
    frames. Two cases the formulas leave open: with `T == 1` uniform takes the middle frame `n // 2` and
    jitter a uniformly random frame; `k` is capped at `n - 1` and the result is kept in temporal order.
    """
    n = num_source_frames
    if n < 1 or num_frames < 1:
        raise ValueError(f"need at least one source frame and one frame to sample, got {n} and {num_frames}")
    rng = np.random.default_rng(seed)
    if num_frames == 1:
        return [n // 2] if mode == "uniform" else [int(rng.integers(0, n))]
    if mode == "uniform":
        start, end = 0, n - 1
    elif mode == "jitter":
        k = min(int(n / (num_frames - 1)), n - 1)
        start, end = int(rng.integers(0, k + 1)), int(rng.integers(n - 1 - k, n))
        start, end = min(start, end), max(start, end)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected 'uniform' or 'jitter'")
    return np.linspace(start, end, num_frames).astype(np.int64).tolist()


def _source_name(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return getattr(source, "name", None) or repr(source)


class _Reopener:
    """Opens the same source more than once (one pass to count packets, one to decode)."""

    def __init__(self, source: VideoSource, name: str):
        self.name = name
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.isfile(path):
                raise VideoDecodeError(name, "file not found")
            if os.path.getsize(path) == 0:
                raise VideoDecodeError(name, "file is empty")
            self._open = lambda: av.open(path)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise VideoDecodeError(name, "no bytes (empty video)")
            data = bytes(source)
            self._open = lambda: av.open(io.BytesIO(data))
        else:
            start = source.tell()

            def reopen():
                source.seek(start)
                return av.open(source)

            self._open = reopen

    def open(self) -> "av.container.InputContainer":
        try:
            return self._open()
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise VideoDecodeError(self.name, f"cannot open as a video ({error})") from error


@dataclass
class _Timeline:
    """Presentation timestamps of a stream's frames (from its packets) and which of them are keyframes."""

    pts: list[int] | None  # sorted; None when some packet has no timestamp
    keyframes: list[int]  # frame indices of keyframes, ascending
    num_frames: int


def _scan_packets(container, stream) -> _Timeline:
    """Count frames by demuxing only (cheap: no decoding); container frame counts are 0 or wrong in some files."""
    packet_pts, key_pts, num_frames, all_timed = [], [], 0, True
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        num_frames += 1
        if packet.pts is None:
            all_timed = False
        elif all_timed:
            packet_pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    if not all_timed or len(set(packet_pts)) != len(packet_pts):
        return _Timeline(pts=None, keyframes=[], num_frames=num_frames)
    packet_pts.sort()
    index_of = {pts: index for index, pts in enumerate(packet_pts)}
    return _Timeline(pts=packet_pts, keyframes=sorted(index_of[p] for p in key_pts), num_frames=num_frames)


def _video_stream(container, name: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(name, f"no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _decode_wanted(container, stream, timeline: _Timeline | None, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode up to the last wanted frame, converting only wanted frames to RGB.

    With a timeline, frames are identified by their timestamps and the decoder jumps ahead to the keyframe
    before the next wanted frame when that skips enough decoding. Without one, frames are counted in order
    and nothing is skipped. Returns whatever wanted frames the stream delivered (fewer if it ended early).
    """
    index_of = {pts: index for index, pts in enumerate(timeline.pts)} if timeline else None
    # One converter for the clip: `frame.to_ndarray(format=...)` would set up a new one for every frame, which
    # costs more than decoding a small frame. Not shared between calls, so threads decoding clips stay apart.
    to_rgb = VideoReformatter()
    found: dict[int, np.ndarray] = {}
    pending = sorted(set(wanted))
    position = last_seek = -1  # indices of the last decoded frame and of the last keyframe sought
    while pending:
        seeked = False
        for frame in container.decode(stream):
            if index_of is None:
                position += 1
            elif frame.pts in index_of:
                position = index_of[frame.pts]
            else:
                return found  # timestamps disagree with the packets: let the caller fall back
            if position in pending:
                found[position] = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                pending.remove(position)
                if not pending:
                    return found
            if index_of is not None and timeline.keyframes:
                keyframe = timeline.keyframes[max(bisect.bisect_right(timeline.keyframes, pending[0]) - 1, 0)]
                if keyframe - position > MIN_FRAMES_SKIPPED_BY_SEEK and keyframe > last_seek:
                    container.seek(timeline.pts[keyframe], stream=stream, backward=True, any_frame=False)
                    last_seek, seeked = keyframe, True
                    break
        if not seeked:
            break
    return found


def decode_video(
    source: VideoSource,
    num_frames: int,
    mode: SamplingMode = "uniform",
    seed: int | np.random.Generator | None = None,
    with_middle_frame: bool = True,
) -> DecodedVideo:
    """Decode `num_frames` frames of a clip, sampled per SPEC §5, and its middle frame.

    Args:
        source: a path, the file's bytes, or a seekable binary file object.
        num_frames: `T`.
        mode: `"uniform"` for evaluation, `"jitter"` for training (see `sample_frame_indices`).
        seed: an int or a numpy `Generator` for the jitter.
        with_middle_frame: also return frame `n // 2` (the `F` source of OCL, the captioner's input).

    Raises:
        VideoDecodeError: naming the source, for a missing, empty, truncated or undecodable file or one
            without a video stream.
    """
    name = _source_name(source)
    reopener = _Reopener(source, name)
    rng = np.random.default_rng(seed)
    try:
        with reopener.open() as container:
            timeline = _scan_packets(container, _video_stream(container, name))
        num_source = timeline.num_frames
        result = None
        if num_source > 0:
            result = _decode_sampled(reopener, name, timeline, num_frames, mode, rng, with_middle_frame)
        if result is None:
            # The packets promised frames the decoder did not deliver (or none at all): count what decodes.
            with reopener.open() as container:
                num_source = sum(1 for _ in container.decode(_video_stream(container, name)))
            if num_source == 0:
                raise VideoDecodeError(name, "no decodable video frames (empty or truncated stream)")
            timeline = _Timeline(pts=None, keyframes=[], num_frames=num_source)
            result = _decode_sampled(reopener, name, timeline, num_frames, mode, rng, with_middle_frame)
            if result is None:
                raise VideoDecodeError(name, "frames decode inconsistently between passes")
    except av.FFmpegError as error:
        raise VideoDecodeError(name, f"decoding failed, file truncated or corrupt? ({error})") from error
    return result


def _decode_sampled(reopener, name, timeline, num_frames, mode, rng, with_middle_frame) -> DecodedVideo | None:
    n = timeline.num_frames
    indices = sample_frame_indices(n, num_frames, mode, rng)
    middle_index = n // 2
    wanted = indices + ([middle_index] if with_middle_frame else [])
    with reopener.open() as container:
        stream = _video_stream(container, name)
        found = _decode_wanted(container, stream, timeline if timeline.pts else None, wanted)
    if any(index not in found for index in wanted):
        return None
    return DecodedVideo(
        frames=np.stack([found[index] for index in indices]),
        middle_frame=found[middle_index] if with_middle_frame else None,
        indices=indices,
        middle_index=middle_index,
        num_source_frames=n,
    )


def _is_single_video(item) -> bool:
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read"):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    if isinstance(item, (list, tuple)) and len(item) > 0:
        return isinstance(item[0], Image.Image) or (isinstance(item[0], np.ndarray) and item[0].ndim == 3)
    return False


def _frames_tensor(frames) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 (array, tensor or list of PIL images / `(H, W, 3)` arrays) -> `(T, 3, H, W)` float."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames])
    tensor = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).float()


class ClipVipImageProcessor(BaseImageProcessor):
    r"""Turns videos (or images) into CLIP-ViP's `pixel_values`, in torch.

    Frames are resized (by default squashed to `size` = 224x224 bicubic, aspect not kept, as the authors do;
    with `do_center_crop=True` the shortest edge is resized to `size["shortest_edge"]` and the centre
    `crop_size` cut out, as CLIP does), clamped and rounded as an 8-bit resize would, rescaled by 1/255 and
    normalised with CLIP's mean and std.

    Videos can be paths, bytes or file objects (decoded with `decode_video`, `num_frames` frames sampled
    uniformly), decoded arrays `(T, H, W, 3)` uint8 (used as they are), or lists of PIL images (the frames).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        do_center_crop: bool = False,
        crop_size: dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        num_frames: int = 12,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size or ({"shortest_edge": 224} if do_center_crop else {"height": 224, "width": 224}))
        self.do_center_crop = do_center_crop
        self.crop_size = dict(crop_size or {"height": 224, "width": 224})
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.num_frames = num_frames

    def __call__(self, videos=None, images=None, **kwargs) -> BatchFeature:
        return self.preprocess(videos=videos, images=images, **kwargs)

    def preprocess(
        self,
        videos=None,
        images=None,
        num_frames: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Returns `pixel_values`: `(B, T, 3, H, W)` float32 for videos, `(B, 3, H, W)` for images."""
        if (videos is None) == (images is None):
            raise ValueError("pass exactly one of `videos` and `images`")
        if videos is not None:
            batch = [videos] if _is_single_video(videos) else list(videos)
            clips = [self.preprocess_frames(self._load_frames(video, num_frames)) for video in batch]
            if len({clip.shape for clip in clips}) > 1:
                raise ValueError(f"videos differ in frame count or size: {[tuple(c.shape) for c in clips]}")
            pixel_values = torch.stack(clips)
        else:
            batch = [images] if isinstance(images, Image.Image) or np.ndim(images) == 3 else list(images)
            pixel_values = torch.cat([self.preprocess_frames(_frames_tensor([image])) for image in batch])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _load_frames(self, video, num_frames: int | None) -> torch.Tensor:
        if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read"):
            decoded = decode_video(video, num_frames or self.num_frames, with_middle_frame=False)
            return _frames_tensor(decoded.frames)
        return _frames_tensor(video)

    def preprocess_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """`(T, 3, H, W)` float in [0, 255] (or uint8) -> `(T, 3, H', W')` normalised float32."""
        frames = frames.float()
        if self.do_resize:
            if self.do_center_crop:
                frames = self._resize_shortest_edge(frames, self.size["shortest_edge"])
            else:
                frames = self._resize(frames, self.size["height"], self.size["width"])
        if self.do_center_crop:
            frames = self._center_crop(frames, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            frames = frames * self.rescale_factor
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=frames.dtype).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std, dtype=frames.dtype).view(1, 3, 1, 1)
            frames = (frames - mean) / std
        return frames.contiguous()

    @staticmethod
    def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if frames.shape[-2:] == (height, width):
            return frames
        # Antialiased bicubic matches Pillow's downscaling; clamp and round as an 8-bit image would be.
        resized = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return resized.clamp_(0, 255).round_()

    def _resize_shortest_edge(self, frames: torch.Tensor, shortest_edge: int) -> torch.Tensor:
        height, width = frames.shape[-2:]
        scale = shortest_edge / min(height, width)
        return self._resize(frames, max(1, round(height * scale)), max(1, round(width * scale)))

    @staticmethod
    def _center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        pad_h, pad_w = max(height - frames.shape[-2], 0), max(width - frames.shape[-1], 0)
        if pad_h or pad_w:
            frames = F.pad(frames, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        top = (frames.shape[-2] - height) // 2
        left = (frames.shape[-1] - width) // 2
        return frames[..., top : top + height, left : left + width]


def _load_tokenizer(path, **kwargs):
    """The tokenizer class its config names (a transformers class), else `AutoTokenizer` without remote code.

    Going through `AutoTokenizer` would read the model's config (model type `clip_vip`, unknown to transformers)."""
    try:
        config = json.loads(Path(path, "tokenizer_config.json").read_text())
    except OSError:
        config = {}
    tokenizer_class = getattr(transformers, str(config.get("tokenizer_class")), None)
    if tokenizer_class is not None:
        return tokenizer_class.from_pretrained(path, **kwargs)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)


class ClipVipProcessor(ProcessorMixin):
    r"""CLIP-ViP's processor: `ClipVipImageProcessor` for videos and images, CLIP's tokenizer for text.

    Text is padded to `max_length` and truncated; `max_length=None` uses the tokenizer's `model_max_length`
    (77 for CLIP). The reference used 70 in post-pretraining and 50 in fine-tuning (SPEC §5).
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int | None = None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        self.max_length = max_length

    @classmethod
    def for_config(cls, config, tokenizer, num_frames: int | None = None, max_length: int | None = None):
        """The processor of a `ClipVipConfig`'s model: frames squashed to its image size, `num_frames` sampled
        (default: the length of its temporal table)."""
        vision = config.vision_config
        size = {"height": vision.image_size, "width": vision.image_size}
        image_processor = ClipVipImageProcessor(size=size, num_frames=num_frames or vision.num_frames)
        return cls(image_processor, tokenizer, max_length=max_length)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Both parts are plain classes (this module's image processor, a CLIP tokenizer): nothing asks to run remote code.
        kwargs.pop("trust_remote_code", None)
        image_processor = ClipVipImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, _load_tokenizer(pretrained_model_name_or_path, **kwargs)]

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos=None,
        images=None,
        num_frames: int | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **tokenizer_kwargs,
    ) -> BatchFeature:
        """Returns `input_ids`/`attention_mask` `(N, L)` for text and `pixel_values` for videos or images."""
        if text is None and videos is None and images is None:
            raise ValueError("pass at least one of `text`, `videos` and `images`")
        data = {}
        if text is not None:
            tokenizer_kwargs = {"padding": "max_length", "truncation": True, **tokenizer_kwargs}
            max_length = max_length or self.max_length or self.tokenizer.model_max_length
            data.update(self.tokenizer(text, max_length=max_length, return_tensors=return_tensors, **tokenizer_kwargs))
        if videos is not None or images is not None:
            pixels = self.image_processor(videos=videos, images=images, num_frames=num_frames, return_tensors=return_tensors)
            data.update(pixels)
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


ClipVipImageProcessor.register_for_auto_class("AutoImageProcessor")
ClipVipProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ClipVipImageProcessor",
    "ClipVipProcessor",
    "DecodedVideo",
    "VideoDecodeError",
    "decode_video",
    "sample_frame_indices",
]
