"""Synthetic test videos written with PyAV whose frames carry a readable index.

Each default frame shows its index as a 3x3 grid of black/white blocks (9 bits, so indices 0-511), which
survives lossy codecs and chroma subsampling; `read_frame_index` reads it back from a decoded RGB frame.
Tests, the demo and the benchmark reuse `write_video` with their own `frame_fn` where they need other content.
"""

import os
from collections.abc import Callable, Sequence
from fractions import Fraction

import av
import numpy as np

GRID = 3
MAX_INDEX = 2 ** (GRID * GRID) - 1


def index_pattern(index: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame `(h, w, 3)` uint8 whose 3x3 block grid spells `index` in binary (row-major, MSB first)."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} does not fit in {GRID * GRID} bits")
    width, height = size
    bits = [(index >> (GRID * GRID - 1 - k)) & 1 for k in range(GRID * GRID)]
    rows = np.minimum(np.arange(height) * GRID // height, GRID - 1)
    cols = np.minimum(np.arange(width) * GRID // width, GRID - 1)
    grid = np.array(bits, dtype=np.uint8).reshape(GRID, GRID) * 255
    frame = grid[rows][:, cols]
    return np.repeat(frame[:, :, None], 3, axis=2)


def read_frame_index(frame: np.ndarray) -> int:
    """Read back the index drawn by `index_pattern` from an RGB frame `(h, w, 3)`, at any size."""
    height, width = frame.shape[:2]
    luma = frame.astype(np.float32).mean(axis=2)
    index = 0
    for row in range(GRID):
        for col in range(GRID):
            # The centre half of each block: codecs blur the edges between blocks.
            top, bottom = (4 * row + 1) * height // (4 * GRID), (4 * row + 3) * height // (4 * GRID)
            left, right = (4 * col + 1) * width // (4 * GRID), (4 * col + 3) * width // (4 * GRID)
            block = luma[top : max(bottom, top + 1), left : max(right, left + 1)]
            index = (index << 1) | int(block.mean() > 127)
    return index


def write_video(
    path: str | os.PathLike,
    num_frames: int,
    size: tuple[int, int] = (32, 32),
    fps: int = 10,
    codec: str = "libx264",
    frame_fn: Callable[[int], np.ndarray] | None = None,
    pix_fmt: str = "yuv420p",
    gop_size: int | None = None,
    frame_times: Sequence[float] | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Write `num_frames` frames to `path` (the container follows the extension) and return the path.

    Args:
        size: `(width, height)`; odd sizes are fine for codecs that accept them (libx264 with yuv444p, mpeg4
            with yuv420p pads internally).
        frame_fn: index -> RGB frame `(height, width, 3)` uint8; defaults to `index_pattern`.
        gop_size: distance between keyframes (codec default when None).
        frame_times: presentation time in seconds of each frame, for variable frame rate clips; evenly spaced
            at `fps` when None.
        options: extra encoder options (e.g. `{"crf": "30"}`).
    """
    path = os.fspath(path)
    frame_fn = frame_fn or (lambda index: index_pattern(index, size))
    time_base = Fraction(1, 1000) if frame_times is not None else Fraction(1, fps)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_fn(index)), format="rgb24")
            frame.pts = round(frame_times[index] / time_base) if frame_times is not None else index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
