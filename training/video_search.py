"""What `clip-vip index` and `clip-vip search` do: embed a collection of videos once, then search it.

Indexing reads a manifest (the format of `training/data.py`: JSON lines, CSV or Parquet with a `video` column,
paths relative to the manifest's folder) or every video file under a folder, decodes the clips in threads,
embeds them in batches and writes each batch's L2-normalised features to an Arrow file as it comes
(`Dataset.from_generator`), so a million clips never sit in memory at once. The FAISS index (its type chosen
for the collection's size, see `training/search_index.py`) is built over that file and saved with it. Videos
are stored by absolute path. Bad clips (missing, empty, truncated, undecodable, rows without a video) are
skipped and listed with the reason in `skipped.jsonl` beside the index.

The index records the model folder and frame count it was built with; searching embeds the query with the
same model (another `model_dir` may be given, but it must embed into the same space). A video query is
searched like any other: a clip of the collection finds itself first, with similarity 1, unless
`exclude_query` drops hits on the query's own file.
"""

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from datasets import Dataset, Features, List, Value
from tqdm.auto import tqdm

from modeling_clip_vip.processing_clip_vip import VideoDecodeError, decode_video

from .classification import embed_texts, embed_videos, load_for_inference
from .data import MANIFEST_BUILDERS, VIDEO_EXTENSIONS, manifest_video, read_manifest
from .search_index import (
    CONFIG_FILE,
    FEATURES_COLUMN,
    FLAT_INDEX_MAX_SIZE,
    INDEX_TYPES,
    VIDEO_COLUMN,
    VideoHit,
    VideoIndex,
)

SKIPPED_FILE = "skipped.jsonl"


@dataclass
class IndexArguments:
    """`clip-vip index` options."""

    input_path: str = field(
        metadata={"help": "A manifest (.jsonl/.json/.csv/.parquet) or a folder (every video file under it)."}
    )
    model_dir: str = field(metadata={"help": "A saved ClipVipModel folder with its processor."})
    output_dir: str = field(metadata={"help": "Where the features, the FAISS index and skipped.jsonl are written."})
    video_column: str = field(default=VIDEO_COLUMN, metadata={"help": "The manifest's video column."})
    batch_size: int = 16
    num_frames: int | None = field(default=None, metadata={"help": "Frames per clip; default: the processor's."})
    index_type: str = field(default="auto", metadata={"help": f"One of {INDEX_TYPES}; auto picks by size."})
    flat_max_size: int = field(
        default=FLAT_INDEX_MAX_SIZE, metadata={"help": "With index_type auto: flat below this many videos, IVF above."}
    )
    num_workers: int = field(default=2, metadata={"help": "Threads decoding clips."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})


@dataclass
class IndexSummary:
    output_dir: str
    skipped_file: str
    num_indexed: int
    num_skipped: int
    index_type: str


@dataclass
class SearchArguments:
    """`clip-vip search` options."""

    index_dir: str = field(metadata={"help": "A folder written by clip-vip index."})
    text: str | None = field(default=None, metadata={"help": "Search with this text..."})
    video: str | None = field(default=None, metadata={"help": "...or for videos similar to this one."})
    top_k: int = 10
    model_dir: str | None = field(default=None, metadata={"help": "Default: the model the index was built with."})
    exclude_query: bool = field(
        default=False, metadata={"help": "With --video: leave the query's own file out of the results."}
    )
    output_file: str | None = field(default=None, metadata={"help": "Also write the results here as JSON."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})


def iter_video_paths(input_path: str | Path, video_column: str = VIDEO_COLUMN) -> Iterator[tuple[str, str | None]]:
    """`(name, absolute path)` of each video of a manifest or folder, in order; the path is None (and the name
    says why) for a manifest row without a video."""
    input_path = Path(input_path)
    if input_path.is_dir():
        extensions = {f".{extension}" for extension in VIDEO_EXTENSIONS}
        for path in sorted(p for p in input_path.rglob("*") if p.suffix.lower() in extensions and p.is_file()):
            yield str(path.absolute()), str(path.absolute())
        return
    if input_path.suffix.lower() not in MANIFEST_BUILDERS:
        raise ValueError(f"expected a folder or a manifest ({', '.join(MANIFEST_BUILDERS)}), got {input_path}")
    for row_index, row in enumerate(read_manifest(input_path)):
        path, name = manifest_video(input_path, row, row_index, video_column)
        yield name, path


def _decode(video: tuple[str, str | None], num_frames: int) -> np.ndarray | VideoDecodeError:
    """`(T, H, W, 3)` uint8 frames of a `(name, path)` clip, or the error that makes it a bad one."""
    name, path = video
    if path is None:
        return VideoDecodeError(name, "no video")
    try:
        return decode_video(path, num_frames, mode="uniform", with_middle_frame=False).frames
    except VideoDecodeError as error:
        return error


def _embedded_rows(
    videos: Iterator[tuple[str, str | None]],
    model: Any,
    processor: Any,
    num_frames: int,
    batch_size: int,
    executor: ThreadPoolExecutor,
    skipped: list[dict[str, str]],
    progress: tqdm,
) -> Iterator[dict[str, Any]]:
    """One `{video, features}` row a good clip, features L2-normalised; bad clips go to `skipped`."""
    while batch := list(islice(videos, batch_size)):
        decoded = list(executor.map(partial(_decode, num_frames=num_frames), batch))
        good = []
        for (name, _), frames in zip(batch, decoded):
            if isinstance(frames, VideoDecodeError):
                skipped.append({"video": name, "reason": frames.reason})
            else:
                good.append((name, frames))
        if good:
            features = F.normalize(embed_videos(model, processor, [frames for _, frames in good], batch_size), dim=-1)
            for (name, _), vector in zip(good, features.float().cpu().numpy()):
                yield {VIDEO_COLUMN: name, FEATURES_COLUMN: vector}
        progress.update(len(batch))
        progress.set_postfix(skipped=len(skipped))


def build_video_index(args: IndexArguments) -> IndexSummary:
    """Embed every video of `args.input_path` with the model of `args.model_dir` and save a searchable index to
    `args.output_dir` (see the module docstring)."""
    output_dir = Path(args.output_dir)
    if (output_dir / CONFIG_FILE).exists():
        raise FileExistsError(f"{output_dir} already holds a video index; delete it or choose another output_dir")
    if args.index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {args.index_type!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_for_inference(args.model_dir, args.device)
    num_frames = args.num_frames or processor.image_processor.num_frames
    features = Features(
        {VIDEO_COLUMN: Value("string"), FEATURES_COLUMN: List(Value("float32"), length=model.config.projection_dim)}
    )
    skipped: list[dict[str, str]] = []
    videos = iter_video_paths(args.input_path, args.video_column)
    # The Arrow file is written next to the index (same disk), then copied into it by `VideoIndex.save`.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".embedding-") as cache_dir:
        with ThreadPoolExecutor(max(args.num_workers, 1)) as executor, tqdm(unit="clip", desc="embedding") as progress:
            rows = partial(_embedded_rows, videos, model, processor, num_frames, args.batch_size, executor, skipped,
                           progress)
            try:
                # A fingerprint given up front: hashing the generator would hash the model with it.
                dataset = Dataset.from_generator(rows, features=features, cache_dir=cache_dir,
                                                 fingerprint=os.urandom(16).hex())
            except ValueError:
                # datasets refuses a generator that yields nothing: every clip was bad, or there were none.
                if progress.n > len(skipped):
                    raise
                dataset = None
        skipped_file = output_dir / SKIPPED_FILE
        skipped_file.write_text("".join(json.dumps(entry) + "\n" for entry in skipped), encoding="utf-8")
        if dataset is None:
            raise ValueError(
                f"no video of {args.input_path} could be embedded; {len(skipped)} skipped, see {skipped_file}"
            )
        index = VideoIndex.from_dataset(dataset, index_type=args.index_type, flat_max_size=args.flat_max_size)
        index.settings.update(model_dir=str(Path(args.model_dir).absolute()), num_frames=num_frames)
        index.save(output_dir)
        return IndexSummary(str(output_dir), str(skipped_file), len(index), len(skipped), index.index_type)


class ClipVipVideoSearch:
    """A saved video index and a model embedding into the same space: search it by text or by example video."""

    def __init__(self, index: VideoIndex, model: Any, processor: Any, num_frames: int | None = None):
        self.index = index
        self.model = model
        self.processor = processor
        self.num_frames = num_frames or processor.image_processor.num_frames

    @classmethod
    def load(cls, index_dir: str | Path, model_dir: str | Path | None = None, device: str | None = None):
        """Reopen `index_dir`, with the model it was built with unless `model_dir` is given."""
        index = VideoIndex.load(index_dir)
        model_dir = model_dir or index.settings.get("model_dir")
        if model_dir is None:
            raise ValueError(f"{index_dir} does not record the model it was built with: pass model_dir")
        model, processor = load_for_inference(model_dir, device)
        return cls(index, model, processor, index.settings.get("num_frames"))

    def search_text(self, texts: str | Sequence[str], k: int = 10) -> list[list[VideoHit]]:
        """The `k` videos most similar to each text, best first, with cosine similarities."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.index.search(embed_texts(self.model, self.processor, texts), k)

    def search_video(
        self, videos: str | Path | Sequence[str | Path], k: int = 10, exclude_query: bool = False
    ) -> list[list[VideoHit]]:
        """The `k` videos most similar to each video file, best first; with `exclude_query`, hits on the query's
        own file are left out (otherwise a video of the collection is its own first hit)."""
        paths = [str(Path(video).absolute()) for video in ([videos] if isinstance(videos, (str, Path)) else videos)]
        frames = [decode_video(path, self.num_frames, with_middle_frame=False).frames for path in paths]
        hits = self.index.search(embed_videos(self.model, self.processor, frames), k + int(exclude_query))
        if exclude_query:
            hits = [[hit for hit in row if hit.video != path][:k] for row, path in zip(hits, paths)]
        return hits


def search_videos(args: SearchArguments) -> list[VideoHit]:
    """The `args.top_k` best matches for `args.text` or `args.video` (exactly one); written to `args.output_file`
    as JSON when set."""
    if (args.text is None) == (args.video is None):
        raise ValueError("search with either a text or a video, not both or neither")
    search = ClipVipVideoSearch.load(args.index_dir, args.model_dir, args.device)
    if args.text is not None:
        hits = search.search_text(args.text, args.top_k)[0]
    else:
        hits = search.search_video(args.video, args.top_k, args.exclude_query)[0]
    if args.output_file:
        query = {"text": args.text} if args.text is not None else {"video": args.video}
        report = {"query": query, "results": [{"rank": rank, **asdict(hit)} for rank, hit in enumerate(hits, 1)]}
        Path(args.output_file).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return hits
