"""ClipVipModel speed and memory on the CPU: inference videos/s and training-step time and peak memory.

Random weights at the real sizes (`hub_configs/clip-vip-base-patch32`, `-patch16`), 12 frames at 224 px, 2
threads. Every case runs in a fresh process (so its peak resident memory, VmHWM from `/proc` over the timed
steps after a warm-up step, is its own); the cases are alternated round by round and each reports the median
over `--rounds` processes. Achieved GFLOP/s (FLOPs counted by `torch.utils.flop_counter`) is printed next to a
large sgemm measured in the same process.

Cases: inference (batch 4) for B/32 and B/16; a training step (videos 4 x 12 frames and texts 4 x 32, symmetric
contrastive loss, backward) for B/32, plain and with activation checkpointing; the same at B/32 with a dense
masked attention (one `(N, N)` attention per layer with the proxy mask, the way a straightforward implementation
computes the pattern) swapped in for the block-wise one. One JSON line per case.

    python benchmarks/bench_model.py                      # everything, 3 rounds
    python benchmarks/bench_model.py --cases train-b32 train-b32-ckpt --rounds 5
    python benchmarks/bench_model.py --quick              # tiny model, seconds (smoke test)
    python benchmarks/bench_model.py --env MALLOC_MMAP_THRESHOLD_=65536  # glibc frees big tensors at once
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

B32, B16 = "clip-vip-base-patch32", "clip-vip-base-patch16"
CASES = {
    "infer-b32": {"mode": "infer", "config": B32, "attention": "proxy", "checkpointing": False},
    "infer-b16": {"mode": "infer", "config": B16, "attention": "proxy", "checkpointing": False},
    "infer-b32-dense": {"mode": "infer", "config": B32, "attention": "dense", "checkpointing": False},
    "train-b32": {"mode": "train", "config": B32, "attention": "proxy", "checkpointing": False},
    "train-b32-ckpt": {"mode": "train", "config": B32, "attention": "proxy", "checkpointing": True},
    "train-b32-dense": {"mode": "train", "config": B32, "attention": "dense", "checkpointing": False},
    "train-b32-dense-ckpt": {"mode": "train", "config": B32, "attention": "dense", "checkpointing": True},
}
FULL_SIZE = {"batch": 4, "frames": 12, "text_length": 32, "steps": 1, "sgemm": 4096}
QUICK_SIZE = {"batch": 2, "frames": 4, "text_length": 8, "steps": 1, "sgemm": 256}


def dense_masked_attention_class():
    """A `ClipVipAttention` computing the proxy pattern as one dense attention over all tokens with a mask."""
    import torch

    from modeling_clip_vip.modeling_clip_vip import ClipVipAttention

    class DenseMaskedAttention(ClipVipAttention):
        def forward(self, front_states, patch_states, layout, front_only=False, output_attentions=False):
            front, length = layout.num_front, layout.length
            frame = (torch.arange(length) - front).div(layout.num_patches, rounding_mode="floor")
            allowed = (frame[:, None] == frame[None, :]) | (frame[:, None] < 0) | (frame[None, :] < 0)
            hidden_states = torch.cat([front_states, patch_states], dim=1)
            queries = self.q_proj(front_states if front_only else hidden_states)
            keys, values = self.k_proj(hidden_states), self.v_proj(hidden_states)
            output = torch.nn.functional.scaled_dot_product_attention(
                *(self._split_heads(states) for states in (queries, keys, values)),
                attn_mask=allowed[: queries.shape[1]],
                scale=self.scale,
            ).transpose(1, 2).flatten(2)
            patch_output = None if front_only else self.out_proj(output[:, front:])
            return self.out_proj(output[:, :front]), patch_output, None

    return DenseMaskedAttention


def peak_resident_mb() -> float:
    """VmHWM of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_resident() -> None:
    """Restart VmHWM from the current resident size (Linux `clear_refs`), so the warm-up step's peak is dropped."""
    Path("/proc/self/clear_refs").write_text("5")


def sgemm_gflops(size: int, repeats: int = 3) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def run_case(name: str, quick: bool, threads: int) -> dict:
    """Build the case's model in this process, time it, and return its measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_clip_vip.configuration_clip_vip import ClipVipConfig
    from modeling_clip_vip.modeling_clip_vip import ClipVipModel

    torch.set_num_threads(threads)
    case, size = CASES[name], QUICK_SIZE if quick else FULL_SIZE
    config = ClipVipConfig.from_pretrained(ROOT / "hub_configs" / ("clip-vip-tiny" if quick else case["config"]))
    config.vision_config.num_frames = size["frames"]
    torch.manual_seed(0)
    model = ClipVipModel(config)
    model.set_attn_implementation("sdpa")
    if case["attention"] == "dense":
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.__class__ = dense_masked_attention_class()
    vision = config.vision_config
    pixel_values = torch.randn(size["batch"], size["frames"], 3, vision.image_size, vision.image_size)
    input_ids = torch.randint(0, config.text_config.vocab_size, (size["batch"], size["text_length"]))

    if case["mode"] == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                model.get_video_features(pixel_values)
    else:
        model.train()
        if case["checkpointing"]:
            model.activation_checkpointing_enable()

        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True).loss.backward()

    step()  # warm-up (and compiling the fused activation)
    reset_peak_resident()
    times = []
    for _ in range(size["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_mb = peak_resident_mb()
    with FlopCounterMode(display=False) as counter:  # after the peak is read: counting holds on to memory
        step()
    seconds = statistics.median(times)
    return {
        "seconds": seconds,
        "peak_mb": peak_mb,
        "gflops": counter.get_total_flops() / seconds / 1e9,
        "sgemm_gflops": sgemm_gflops(size["sgemm"]),
        "batch": size["batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per case; medians are reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the tiny config at a small size: a smoke test")
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="NAME=VALUE",
        help="extra environment for the case processes, e.g. glibc malloc settings MALLOC_MMAP_THRESHOLD_=65536",
    )
    parser.add_argument("--run-one", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_case(args.run_one, args.quick, args.threads)))
        return

    extra_environment = dict(setting.split("=", 1) for setting in args.env)
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **extra_environment}
    results = {name: [] for name in args.cases}
    for _ in range(args.rounds):
        for name in args.cases:
            command = [sys.executable, __file__, "--run-one", name, "--threads", str(args.threads)]
            command += ["--quick"] if args.quick else []
            finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
            results[name].append(json.loads(finished.stdout.strip().splitlines()[-1]))
    for name, runs in results.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        line = {"case": name, **CASES[name], "quick": args.quick, "rounds": len(runs), "threads": args.threads}
        line["env"] = extra_environment
        if CASES[name]["mode"] == "infer":
            line["videos_per_s"] = round(runs[0]["batch"] / seconds, 3)
        else:
            line["step_s"] = round(seconds, 3)
        line["peak_gb"] = round(statistics.median(run["peak_mb"] for run in runs) / 1024, 3)
        line["gflops"] = float(f'{statistics.median(run["gflops"] for run in runs):.3g}')
        line["sgemm_gflops"] = float(f'{statistics.median(run["sgemm_gflops"] for run in runs):.3g}')
        line["seconds_all"] = [round(run["seconds"], 3) for run in runs]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
