"""Video-text pairs streamed with `datasets`, decoded with PyAV in DataLoader workers, batched for CLIP-ViP.

Two inputs, one record format:

- a manifest (JSON lines, CSV or Parquet) with columns `video` (a path, relative to the manifest's folder
  unless absolute), `text` (a string, or a list of strings when a video has several) and optionally
  `caption` (the auxiliary caption, source `C`); the names are options. Every command reads this format.
- WebDataset tar shards: per sample `<key>.mp4` (or .webm, .mkv, .avi, .mov, .m4v) and `<key>.json` holding
  `{"text": ..., "caption": ...}`.

`build_video_text_dataset` returns a `datasets.IterableDataset` of decoded clips; `ClipVipCollator` turns
them into batches. How the work is spread: a single manifest file is one shard to `datasets`, so it is read
through a generator with `num_parts` shards, part `p` keeping rows `i % num_parts == p`. `datasets` hands
whole shards to DataLoader workers, and accelerate (with `dispatch_batches=False`) gives each process its
own shards when there are at least as many as processes, so every worker of every process decodes a
disjoint part. Decoding is a batched `.map` that runs lazily in the worker iterating the data.

Bad samples (missing, empty, truncated or undecodable videos, audio-only files, empty or non-string texts)
are dropped in the worker with a warning naming the file; the number dropped since the previous good sample
rides on the next good one (`num_skipped`), and the collator sums it into the batch, so batches stay full
and the counts reach the main process. `ClipVipBadSampleTracker` enforces a maximum bad fraction, in each
worker (so a worker whose data is all bad stops the run rather than going quiet) and, fed with
`num_skipped` of each batch, in the main process. Bad samples after a worker's last good one are warned
about and checked by the worker but do not reach the main process's count.

Trainer settings this needs: `remove_unused_columns=False` (else the Trainer drops every column that is not
a `forward` argument), `max_steps` (a stream has no length), and with several processes
`accelerator_config={"dispatch_batches": False}` with `num_parts` (or the number of tar shards) at least the
number of processes, so that each process reads its own shards instead of process 0 decoding for all.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset, Video, load_dataset

from modeling_clip_vip.processing_clip_vip import ClipVipProcessor, SamplingMode, VideoDecodeError, decode_video

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
MANIFEST_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
RECORD_COLUMNS = ["video", "name", "text", "caption"]


class TooManyBadSamplesError(RuntimeError):
    """More bad samples than the configured fraction allows."""


class ClipVipBadSampleTracker:
    """Counts good and bad samples and raises once the bad fraction exceeds `max_bad_fraction`.

    The limit is checked only after `min_samples` samples, so that a few bad files early on do not stop a run.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 100, where: str = "data"):
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.where = where
        self.num_good = 0
        self.num_bad = 0

    @property
    def bad_fraction(self) -> float:
        total = self.num_good + self.num_bad
        return self.num_bad / total if total else 0.0

    def update(self, num_good: int, num_bad: int) -> None:
        self.num_good += num_good
        self.num_bad += num_bad
        if self.num_good + self.num_bad >= self.min_samples and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadSamplesError(
                f"{self.where}: {self.num_bad} of {self.num_good + self.num_bad} samples were bad "
                f"({self.bad_fraction:.1%} > max_bad_fraction {self.max_bad_fraction:.1%}); see the warnings "
                "above for the files, fix the data or raise the limit"
            )

    def update_from_batch(self, batch: dict[str, Any]) -> None:
        """Count a collated batch: pops its `num_skipped` entry; its clips are the good samples."""
        num_skipped = batch.pop("num_skipped", 0)
        self.update(len(batch["pixel_values"]), int(num_skipped))

    def summary(self) -> str:
        return f"{self.where}: {self.num_good} good samples, {self.num_bad} skipped ({self.bad_fraction:.2%})"


def read_manifest(manifest: str | os.PathLike, streaming: bool = True) -> IterableDataset | Dataset:
    """The rows of a manifest (`.jsonl`/`.json`/`.csv`/`.parquet`) with every column, streamed by default."""
    suffix = Path(manifest).suffix.lower()
    if suffix not in MANIFEST_BUILDERS:
        raise ValueError(f"{manifest}: expected a manifest ({', '.join(MANIFEST_BUILDERS)})")
    return load_dataset(MANIFEST_BUILDERS[suffix], data_files=os.fspath(manifest), split="train", streaming=streaming)


def manifest_video(manifest: str | os.PathLike, row: dict, row_index: int, video_column: str) -> tuple[str | None, str]:
    """`(path, name)` of a manifest row's video, the path taken relative to the manifest's folder.

    A row without a video gives `(None, name)`, the name saying which row of which manifest it is.
    """
    video = row.get(video_column)
    if isinstance(video, str) and video:
        path = os.path.normpath(Path(manifest).absolute().parent / video)
        return path, path
    return None, f"{manifest} row {row_index}: no {video_column!r}"


def _manifest_rows(
    parts: list[int],
    num_parts: int,
    readers: list[IterableDataset],
    manifest: str,
    video_column: str,
    text_column: str,
    caption_column: str,
):
    """Rows of part(s) `parts` of a streamed manifest, each part read through its own reader of the whole file.

    One reader per part: a worker reads several parts one after another, and a streamed dataset keeps its
    iteration state on shared objects, so a second pass through one reader could start past the end and lose
    a part.
    """
    for part, reader in zip(parts, readers):
        # `.iter`, not `for row in reader`: iterating a dataset in a DataLoader worker would split it by worker.
        rows = (dict(zip(batch, values)) for batch in reader.iter(batch_size=256) for values in zip(*batch.values()))
        for index, row in enumerate(rows):
            if index % num_parts != part:
                continue
            path, name = manifest_video(manifest, row, index, video_column)
            yield {"video": path, "name": name, "text": row.get(text_column), "caption": row.get(caption_column)}


def _webdataset_rows(shards: list[str], text_column: str, caption_column: str) -> IterableDataset:
    rows = load_dataset("webdataset", data_files={"train": shards}, split="train", streaming=True)
    names = list(rows.features or {})
    video_member = next((ext for ext in VIDEO_EXTENSIONS if ext in names), None)
    if video_member is None:
        raise ValueError(f"no video member ({', '.join(VIDEO_EXTENSIONS)}) in the shards {shards[:3]}: {names}")
    # The loader types video members as Video(), which decodes with torchcodec: keep the bytes instead.
    rows = rows.cast_column(video_member, Video(decode=False))

    def to_record(row):
        meta = row.get("json") or {}
        video = row[video_member] or {}
        return {
            "video": video.get("bytes"),
            "name": f"{row.get('__url__', '')}:{row['__key__']}.{video_member}",
            "text": meta.get(text_column),
            "caption": meta.get(caption_column),
        }

    return rows.map(to_record, remove_columns=names)


class ClipVipVideoDecoder:
    """Batched `.map` function: decodes records into clips, drops bad ones, carries their count forward.

    Output columns: `frames` `(T, H, W, 3)` uint8, `middle_frame` `(H, W, 3)` uint8, `texts` (one text drawn
    at random when training, all of them when evaluating), `caption` (str or None), `name`, `num_skipped`.
    """

    def __init__(
        self,
        num_frames: int,
        mode: SamplingMode,
        seed: int = 0,
        require_caption: bool = False,
        max_bad_fraction: float = 0.05,
        min_samples: int = 100,
    ):
        self.num_frames = num_frames
        self.mode = mode
        self.seed = seed
        self.require_caption = require_caption
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self._state_pid = None

    def _ensure_state(self) -> None:
        # One generator and one tally per process: DataLoader workers each get a pickled copy. Their torch
        # seed differs per worker and epoch (and follows the main process's seed), so the jitter does too.
        if self._state_pid != os.getpid():
            self._state_pid = os.getpid()
            self._rng = np.random.default_rng([self.seed, torch.initial_seed() % 2**63])
            worker = torch.utils.data.get_worker_info()
            where = f"data worker {worker.id}" if worker else "data"
            self._tracker = ClipVipBadSampleTracker(self.max_bad_fraction, self.min_samples, where)
            self._num_pending_skipped = 0

    def _texts(self, text, caption) -> list[str]:
        texts = text if isinstance(text, list) else [text]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"text must be a non-empty string or list of them, got {text!r}")
        if caption is not None and not (isinstance(caption, str) and caption.strip()):
            raise ValueError(f"caption must be a non-empty string, got {caption!r}")
        if caption is None and self.require_caption:
            raise ValueError("no caption")
        if self.mode == "jitter":
            return [texts[int(self._rng.integers(len(texts)))]]
        return list(texts)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        self._ensure_state()
        out = {key: [] for key in ("frames", "middle_frame", "texts", "caption", "name", "num_skipped")}
        for video, name, text, caption in zip(*(batch[key] for key in RECORD_COLUMNS)):
            try:
                texts = self._texts(text, caption)
                if video is None:
                    raise VideoDecodeError(name, "no video")
                clip = decode_video(video, self.num_frames, self.mode, self._rng)
            except (VideoDecodeError, ValueError) as error:
                logger.warning("skipping %s: %s", name, error)
                self._num_pending_skipped += 1
                self._tracker.update(0, 1)
                continue
            self._tracker.update(1, 0)
            out["frames"].append(clip.frames)
            out["middle_frame"].append(clip.middle_frame)
            out["texts"].append(texts)
            out["caption"].append(caption)
            out["name"].append(name)
            out["num_skipped"].append(self._num_pending_skipped)
            self._num_pending_skipped = 0
        return out


def build_video_text_dataset(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    num_frames: int,
    mode: SamplingMode = "jitter",
    video_column: str = "video",
    text_column: str = "text",
    caption_column: str = "caption",
    require_caption: bool = False,
    seed: int = 0,
    num_parts: int = 8,
    shuffle_buffer_size: int = 0,
    max_bad_fraction: float = 0.05,
    min_samples: int = 100,
) -> IterableDataset:
    """A stream of decoded clips from a manifest file or a list of WebDataset tar shards.

    Args:
        data_files: a manifest (`.jsonl`/`.json`/`.csv`/`.parquet`), or `.tar` shards (a list, or one path).
        num_frames: `T`, frames sampled per clip.
        mode: `"jitter"` (training) or `"uniform"` (evaluation); see `sample_frame_indices`.
        video_column, text_column, caption_column: manifest columns (for shards: keys of the json member).
        require_caption: treat a sample without a caption as bad (training with the `C` source).
        num_parts: shards a manifest is read as; use a multiple of `processes * dataloader workers` so each
            decodes an equal, disjoint part (tar shards keep their own count).
        shuffle_buffer_size: if > 0, shuffle records (before decoding) within a buffer of this size; the
            order changes with `set_epoch`.
        max_bad_fraction, min_samples: the limit on bad samples in each worker (`ClipVipBadSampleTracker`).
    """
    files = [os.fspath(data_files)] if isinstance(data_files, (str, os.PathLike)) else [os.fspath(f) for f in data_files]
    if all(f.endswith(".tar") for f in files):
        rows = _webdataset_rows(files, text_column, caption_column)
    elif len(files) == 1 and Path(files[0]).suffix.lower() in MANIFEST_BUILDERS:
        rows = IterableDataset.from_generator(
            _manifest_rows,
            gen_kwargs={
                "parts": list(range(num_parts)),
                "num_parts": num_parts,
                # Resolved here: resolving data files inside DataLoader workers races in tqdm.
                "readers": [read_manifest(files[0]) for _ in range(num_parts)],
                "manifest": files[0],
                "video_column": video_column,
                "text_column": text_column,
                "caption_column": caption_column,
            },
        )
    else:
        raise ValueError(f"expected one manifest ({', '.join(MANIFEST_BUILDERS)}) or .tar shards, got {files}")
    if shuffle_buffer_size > 0:
        rows = rows.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    decoder = ClipVipVideoDecoder(num_frames, mode, seed, require_caption, max_bad_fraction, min_samples)
    return rows.map(decoder, batched=True, batch_size=1, remove_columns=RECORD_COLUMNS)


class ClipVipCollator:
    """Preprocesses and tokenises decoded clips into a batch for `ClipVipModel` and the OCL loss.

    Batch keys: `pixel_values` `(B, T, 3, H, W)` (source V), `frame_pixel_values` `(B, 1, 3, H, W)` (the middle
    frame, source F), `input_ids`/`attention_mask` `(N, L)` (source S, `N` texts), `text_video_index` `(N,)`
    (the clip of each text: `N == B` when training, more when evaluating with several texts per clip),
    `caption_input_ids`/`caption_attention_mask` `(B, L)` (source C, when every clip has a caption),
    `num_skipped` (bad samples dropped before these, for `ClipVipBadSampleTracker.update_from_batch`).
    """

    def __init__(self, processor: ClipVipProcessor, max_length: int | None = None, with_middle_frame: bool = True):
        self.processor = processor
        self.max_length = max_length
        self.with_middle_frame = with_middle_frame

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        image_processor = self.processor.image_processor
        batch = {"pixel_values": image_processor(videos=[np.asarray(s["frames"]) for s in samples])["pixel_values"]}
        if self.with_middle_frame:
            middle = [np.asarray(s["middle_frame"])[None] for s in samples]
            batch["frame_pixel_values"] = image_processor(videos=middle)["pixel_values"]
        texts = [text for sample in samples for text in sample["texts"]]
        tokens = self.processor(text=texts, max_length=self.max_length)
        batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        batch["text_video_index"] = torch.tensor([i for i, s in enumerate(samples) for _ in s["texts"]])
        if all(s["caption"] is not None for s in samples):
            captions = self.processor(text=[s["caption"] for s in samples], max_length=self.max_length)
            batch["caption_input_ids"] = captions["input_ids"]
            batch["caption_attention_mask"] = captions["attention_mask"]
        batch["num_skipped"] = torch.tensor(sum(int(s["num_skipped"]) for s in samples))
        return batch
