"""What `clip-vip caption` does: auxiliary captions (OCL's source `C`, SPEC §4) from each clip's middle frame.

The paper captioned the middle frame of every clip with an image captioning model in at most 16 words. This
runs any transformers captioning model (BLIP, GIT, or a vision-language model with a prompt) loaded through
`AutoModelForImageTextToText` and `AutoProcessor`, greedily, in batches, and writes a new manifest (JSON lines
or Parquet) holding every input column plus the caption column, which `clip-vip train --ocl v-sc,f-c` reads as
its caption source. Video paths are rewritten to stay valid from the output manifest's folder; clips from tar
shards are extracted next to it (`<output>.videos/<shard>/<key>.<ext>`).

Resuming: the input is cut into chunks of `chunk_size` consecutive clips; each finished chunk is written to
`<output>.parts/part-<k>.jsonl` under a temporary name and then renamed, so a part file is complete or absent.
A re-run skips the chunks whose part exists, and at the end the parts are merged, in input order, into the
output (again through a rename) and the parts folder is removed. Killing the process at any point and running
the same command again therefore continues where it stopped, and no clip is written twice or lost. Bad clips
(missing, undecodable, or with an empty caption) are skipped and listed with the reason in
`<output stem>.skipped.jsonl`.
"""

import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import groupby, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_clip_vip.processing_clip_vip import VideoDecodeError, decode_video

from .data import MANIFEST_BUILDERS, VIDEO_EXTENSIONS, manifest_video, read_manifest

PROGRESS_FILE = "progress.json"


@dataclass
class CaptionArguments:
    """`clip-vip caption` options."""

    input_file: list[str] = field(metadata={"help": "A manifest (.jsonl/.json/.csv/.parquet), or .tar shards."})
    output_file: str = field(metadata={"help": "The captioned manifest to write (.jsonl or .parquet)."})
    model_name_or_path: str = field(metadata={"help": "A captioning model folder (BLIP, GIT, ...) and its processor."})
    prompt: str | None = field(default=None, metadata={"help": "Text prompt, for models that need one."})
    caption_column: str = field(default="caption", metadata={"help": "The column the captions are written to."})
    video_column: str = "video"
    max_words: int = field(default=16, metadata={"help": "Captions are cut to this many words (the paper: 16)."})
    max_new_tokens: int = 30
    batch_size: int = 16
    chunk_size: int = field(default=256, metadata={"help": "Clips per resumable part file."})
    num_workers: int = field(default=2, metadata={"help": "Threads decoding middle frames."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    dtype: str | None = field(default=None, metadata={"help": "e.g. bfloat16; the checkpoint's dtype when unset."})


@dataclass
class CaptionSummary:
    output_file: str
    skipped_file: str
    num_captioned: int
    num_skipped: int
    num_resumed: int  # clips (captioned or skipped) that an earlier, interrupted run had already done


@dataclass
class ClipRecord:
    """One input clip: its manifest row (or shard metadata), the video to decode, and a name for messages."""

    row: dict[str, Any]
    source: str | bytes | None
    name: str
    extract_to: Path | None = None  # where a clip read from a tar shard is written for the output manifest


def _manifest_records(manifest: Path, video_column: str, output_folder: Path) -> Iterator[ClipRecord]:
    for index, row in enumerate(read_manifest(manifest)):
        path, name = manifest_video(manifest, row, index, video_column)
        if path is not None:
            video = row[video_column]
            # Relative paths stay relative (the set moves as a whole), now from the output manifest's folder.
            row[video_column] = video if os.path.isabs(video) else os.path.relpath(path, output_folder)
        yield ClipRecord(row, path, name)


def _shard_records(shards: list[str], video_column: str, output_file: Path) -> Iterator[ClipRecord]:
    """WebDataset samples (`<key>.<video ext>` + `<key>.json`, adjacent members) read with `tarfile`."""
    videos_folder = output_file.parent / f"{output_file.name}.videos"
    for shard in shards:
        with tarfile.open(shard) as archive:
            for key, group in groupby((m for m in archive if m.isfile()), key=_sample_key):
                members = {_member_extension(m): archive.extractfile(m).read() for m in group}
                yield _shard_record(shard, key, members, video_column, videos_folder, output_file.parent)


def _sample_key(member: tarfile.TarInfo) -> str:
    folder, name = os.path.split(member.name)
    return os.path.join(folder, name.partition(".")[0])


def _member_extension(member: tarfile.TarInfo) -> str:
    return os.path.basename(member.name).partition(".")[2].lower()


def _shard_record(shard, key, members, video_column, videos_folder, output_folder) -> ClipRecord:
    meta = json.loads(members["json"]) if "json" in members else {}
    name = f"{shard}:{key}"
    extension = next((ext for ext in VIDEO_EXTENSIONS if ext in members), None)
    if extension is None:
        return ClipRecord(meta, None, f"{name}: no video member")
    target = videos_folder / Path(shard).stem / f"{key}.{extension}"
    row = {k: v for k, v in meta.items() if k != video_column}
    row = {video_column: os.path.relpath(target, output_folder), **row}
    return ClipRecord(row, members[extension], f"{name}.{extension}", extract_to=target)


def iter_clip_records(args: CaptionArguments) -> Iterator[ClipRecord]:
    """The input clips in a fixed order (the order chunks and parts are numbered in)."""
    output_file = Path(args.output_file).resolve()
    if all(f.endswith(".tar") for f in args.input_file):
        return _shard_records(args.input_file, args.video_column, output_file)
    if len(args.input_file) == 1 and Path(args.input_file[0]).suffix.lower() in MANIFEST_BUILDERS:
        return _manifest_records(Path(args.input_file[0]), args.video_column, output_file.parent)
    raise ValueError(f"expected one manifest ({', '.join(MANIFEST_BUILDERS)}) or .tar shards, got {args.input_file}")


def middle_frame(record: ClipRecord) -> np.ndarray | VideoDecodeError:
    """The clip's middle frame `(H, W, 3)` uint8, or the error that makes it a bad clip."""
    if record.source is None:
        return VideoDecodeError(record.name, "no video")
    try:
        # One sampled frame in "uniform" mode is the middle one: the decoder decodes that frame only.
        return decode_video(record.source, num_frames=1, mode="uniform", with_middle_frame=True).middle_frame
    except VideoDecodeError as error:
        return error


def _batched(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def truncate_words(text: str, max_words: int) -> str:
    return " ".join(text.split()[:max_words])


class ClipVipCaptioner:
    """Greedy captions of a batch of images with an image-to-text model, prompt removed, cut to `max_words`."""

    def __init__(self, model_name_or_path: str, prompt: str | None = None, max_new_tokens: int = 30,
                 max_words: int = 16, device: str | None = None, dtype: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_name_or_path, dtype=getattr(torch, dtype) if dtype else "auto"
        ).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.max_words = max_words

    @torch.inference_mode()
    def __call__(self, frames: list[np.ndarray]) -> list[str]:
        images = [Image.fromarray(frame) for frame in frames]
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        inputs = inputs.to(self.model.device).to(self.model.dtype)
        sequences = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and torch.equal(sequences[:, : prompt_ids.shape[1]], prompt_ids):
            sequences = sequences[:, prompt_ids.shape[1] :]  # decoder-only models echo the prompt's tokens
        texts = self.processor.batch_decode(sequences, skip_special_tokens=True)
        return [truncate_words(self._without_prompt(t), self.max_words) for t in texts]

    def _without_prompt(self, text: str) -> str:
        # Models that rewrite the prompt's special tokens (BLIP) echo it as text instead.
        text = text.strip()
        prompt = (self.prompt or "").strip()
        if prompt and text.lower().startswith(prompt.lower()):
            return text[len(prompt) :].strip()
        return text


def _write_atomically(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def caption_chunk(
    records: list[ClipRecord], captioner: ClipVipCaptioner, executor: ThreadPoolExecutor, args: CaptionArguments,
    on_clip_done,
) -> list[dict[str, Any]]:
    """Part-file entries for one chunk, in input order: `{"row": ...}` or `{"skipped": {"name", "reason"}}`."""
    entries: list[dict[str, Any]] = [{} for _ in records]
    decoded = executor.map(middle_frame, records)  # decodes ahead while the model captions
    for batch in _batched(enumerate(decoded), args.batch_size):
        good = []
        for position, frame in batch:
            if isinstance(frame, VideoDecodeError):
                entries[position] = {"skipped": {"name": records[position].name, "reason": frame.reason}}
            else:
                good.append((position, frame))
        captions = captioner([frame for _, frame in good]) if good else []
        for (position, _), caption in zip(good, captions):
            record = records[position]
            if not caption:
                entries[position] = {"skipped": {"name": record.name, "reason": "the model's caption is empty"}}
                continue
            if record.extract_to is not None:
                record.extract_to.parent.mkdir(parents=True, exist_ok=True)
                record.extract_to.write_bytes(record.source)
            entries[position] = {"row": {**record.row, args.caption_column: caption}}
        on_clip_done(len(batch))
    return entries


def _check_progress(parts: Path, args: CaptionArguments) -> None:
    """Record what the parts were made with; refuse to resume with different inputs, chunking or model."""
    fingerprint = {
        "input_file": [os.path.abspath(f) for f in args.input_file],
        **{key: value for key, value in asdict(args).items()
           if key in ("chunk_size", "model_name_or_path", "prompt", "max_words", "max_new_tokens", "caption_column")},
    }
    progress = parts / PROGRESS_FILE
    if progress.is_file():
        previous = json.loads(progress.read_text())
        if previous != fingerprint:
            raise ValueError(f"{parts} holds the parts of a run with other settings ({previous}); "
                             "run again with those settings, or delete the folder to start over")
    else:
        _write_atomically(progress, [json.dumps(fingerprint)])


def _merge_parts(parts: Path, num_chunks: int, output_file: Path, skipped_file: Path) -> tuple[int, int]:
    rows, skipped = [], []
    for chunk_index in range(num_chunks):
        for line in (parts / f"part-{chunk_index:06d}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            (rows if "row" in entry else skipped).append(entry.get("row", entry.get("skipped")))
    _write_atomically(skipped_file, [json.dumps(s) + "\n" for s in skipped])
    if output_file.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = output_file.with_name(f".{output_file.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, output_file)
    else:
        _write_atomically(output_file, [json.dumps(row) + "\n" for row in rows])
    return len(rows), len(skipped)


def caption_manifest(args: CaptionArguments) -> CaptionSummary:
    """Caption every clip of `args.input_file` into the manifest `args.output_file` (resumable; see the module)."""
    output_file = Path(args.output_file)
    if output_file.suffix.lower() not in (".jsonl", ".parquet"):
        raise ValueError(f"the output manifest must be .jsonl or .parquet, got {output_file}")
    parts = output_file.with_name(f"{output_file.name}.parts")
    skipped_file = output_file.with_name(f"{output_file.stem}.skipped.jsonl")
    if output_file.exists() and not parts.is_dir():
        raise FileExistsError(f"{output_file} exists; delete it to caption again")
    parts.mkdir(parents=True, exist_ok=True)
    _check_progress(parts, args)

    captioner = ClipVipCaptioner(
        args.model_name_or_path, args.prompt, args.max_new_tokens, args.max_words, args.device, args.dtype
    )
    num_chunks = num_resumed = 0
    with ThreadPoolExecutor(max(args.num_workers, 1)) as executor, tqdm(unit="clip", desc="captioning") as bar:
        for chunk_index, chunk in enumerate(_batched(iter_clip_records(args), args.chunk_size)):
            num_chunks += 1
            part = parts / f"part-{chunk_index:06d}.jsonl"
            if part.is_file():
                num_resumed += len(chunk)
                bar.set_postfix(resumed=num_resumed)
                continue
            entries = caption_chunk(chunk, captioner, executor, args, bar.update)
            _write_atomically(part, [json.dumps(entry, default=str) + "\n" for entry in entries])

    num_captioned, num_skipped = _merge_parts(parts, num_chunks, output_file, skipped_file)
    shutil.rmtree(parts)
    return CaptionSummary(str(output_file), str(skipped_file), num_captioned, num_skipped, num_resumed)
