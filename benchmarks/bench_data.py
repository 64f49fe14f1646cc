"""Clips per second (and per CPU second) for decode + sample + preprocess of 10 s 320x240 H.264 clips.

Compares `decode_video` (sequential decoding, RGB conversion of the sampled frames only, seeking ahead
where a keyframe skips enough frames) with the naive loop that converts every frame, on a long-GOP
(250) and a short-GOP (15) encode; 12 frames preprocessed to 224x224. Prints one JSON line.

    python benchmarks/bench_data.py [--clips 6] [--threads 1]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from modeling_clip_vip.processing_clip_vip import ClipVipImageProcessor, decode_video, sample_frame_indices
from training.video_fixtures import write_video

NUM_FRAMES, SIZE, FPS, SECONDS = 12, (320, 240), 30, 10


def scene(index: int) -> np.ndarray:
    """A textured background panning under two moving squares: a bitrate like real footage, not like noise."""
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width]
    background = (np.sin((x + 2 * index) / 9.0) * np.cos(y / 13.0) * 60 + 128).astype(np.uint8)
    frame = np.repeat(background[:, :, None], 3, axis=2)
    grain = np.random.default_rng(index).integers(0, 12, (height, width, 3), dtype=np.uint8)
    frame = frame + grain
    left = (5 * index) % (width - 60)
    frame[60:120, left : left + 60] = (220, 40, 40)
    frame[150:200, width - 50 - left // 2 : width - left // 2] = (40, 40, 220)
    return frame


def naive(path: str, processor: ClipVipImageProcessor) -> torch.Tensor:
    with av.open(path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    picked = np.stack([frames[i] for i in sample_frame_indices(len(frames), NUM_FRAMES)])
    return processor(videos=picked)["pixel_values"]


def ours(path: str, processor: ClipVipImageProcessor) -> torch.Tensor:
    return processor(videos=decode_video(path, NUM_FRAMES, with_middle_frame=False).frames)["pixel_values"]


def measure(fn, paths, processor) -> dict[str, float]:
    walls, cpus = [], []
    for path in paths:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(path, processor)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "clips_per_s": round(1 / statistics.median(walls), 2),
        "clips_per_cpu_s": round(1 / statistics.median(cpus), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="clips per measurement (median taken)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    processor = ClipVipImageProcessor()
    results = {"clip": f"{SECONDS}s {SIZE[0]}x{SIZE[1]} h264 {FPS}fps", "frames": NUM_FRAMES, "size": 224}
    with tempfile.TemporaryDirectory() as folder:
        for gop in (250, 15):
            path = write_video(Path(folder) / f"gop{gop}.mp4", SECONDS * FPS, size=SIZE, fps=FPS, frame_fn=scene, gop_size=gop)
            paths = [path] * args.clips
            ours(path, processor)  # warm up
            for name, fn in (("ours", ours), ("naive", naive)):
                results[f"gop{gop}_{name}"] = measure(fn, paths, processor)
            results[f"gop{gop}_speedup"] = round(
                results[f"gop{gop}_ours"]["clips_per_s"] / results[f"gop{gop}_naive"]["clips_per_s"], 2
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
