"""A feature store with a FAISS index for video search.

Video features live in a `datasets.Dataset` (a `video` column, a fixed-length `features` column and any
metadata), so a saved store is Arrow on disk and memory-mapped when reopened. Features are L2-normalised
float32, so an inner-product index ranks by cosine similarity. `Dataset.save_to_disk` does not keep an
attached FAISS index: `VideoIndex.save` writes it beside the dataset, with the settings searching needs.

Index types, chosen for the collection size when `index_type="auto"` (figures: `benchmarks/bench_index.py`,
512-d features, two shared CPU cores, so latencies are noisy):

- `flat` (exact inner product) below `FLAT_INDEX_MAX_SIZE` videos. Every query scans every vector: a few
  ms at 10k, tens of ms at 100k, affordable for exact results.
- `ivf` (`IVF{nlist},Flat`, nlist ~ 4*sqrt(N)) from `FLAT_INDEX_MAX_SIZE` on. Only `nprobe` of the nlist
  clusters are scanned; `nprobe` is tuned at build time to the smallest power of two whose recall@10 for
  the neighbours of stored videos, against exact search (all lists probed), reaches `target_recall`. On
  clustered features this gave nprobe 2 at 100k (<1 ms a query, recall 0.995) and nprobe 4 at 1M (~1.2 ms,
  recall 0.988); the 1M build (k-means on 160k points, then assigning a million) took 16 minutes on a
  loaded machine. On structureless (uniform random) features no small nprobe reaches the target and the
  tuning falls back to probing every list: exact results at flat-search cost, never silently wrong ones.
  HNSW (M=32), measured beside it, builds about as fast at 100k and searches as fast on clustered
  features, but at a fixed efSearch its recall on uniform features fell to 0.76 (10k) and 0.21 (100k)
  with no warning.
"""

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, load_from_disk
from datasets.table import InMemoryTable

FEATURES_COLUMN = "features"
VIDEO_COLUMN = "video"
INDEX_FILE = "index.faiss"
CONFIG_FILE = "video_index.json"
INDEX_TYPES = ("auto", "flat", "ivf")
FLAT_INDEX_MAX_SIZE = 100_000
# Training points per IVF cluster: FAISS asks for at least 39; more only slows k-means down.
IVF_TRAINING_POINTS_PER_LIST = 40
TUNING_QUERIES = 200
TUNING_K = 10


@dataclass
class VideoHit:
    """One search result: the video, its cosine similarity to the query, and its row in the store."""

    video: str
    score: float
    row: int


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """`values` (array or tensor, (N, D) or (D,)) as a C-contiguous float32 (N, D) array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) or (D,), got {tuple(np.shape(values))}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(matrix)


def l2_normalize(matrix: np.ndarray, name: str) -> np.ndarray:
    """Rows of `matrix` scaled to unit length; all-zero rows are an error, not a silent NaN."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero_rows = np.flatnonzero(norms[:, 0] == 0)
    if zero_rows.size:
        raise ValueError(f"{name} has all-zero rows (first: {zero_rows[:5].tolist()}); they have no direction")
    return matrix / norms


def choose_index_type(num_videos: int, flat_max_size: int = FLAT_INDEX_MAX_SIZE) -> str:
    """The index type `auto` picks for `num_videos` videos."""
    return "flat" if num_videos < flat_max_size else "ivf"


def ivf_num_lists(num_videos: int) -> int:
    """About 4*sqrt(N) clusters, but never fewer training points per cluster than FAISS asks for."""
    return max(1, min(round(4 * math.sqrt(num_videos)), num_videos // IVF_TRAINING_POINTS_PER_LIST))


def _read_features(dataset: Dataset, rows: Sequence[int] | slice) -> np.ndarray:
    return dataset.with_format("numpy", columns=[FEATURES_COLUMN])[rows][FEATURES_COLUMN].astype(np.float32)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` that appears in the same row of `found`."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def _neighbours_except_self(index: Any, queries: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows for each stored query vector, its own row left out."""
    _, found = index.search(queries, k + 1)
    return np.stack([[r for r in hits if r != row][:k] for hits, row in zip(found, rows)])


def _tune_nprobe(index: Any, queries: np.ndarray, rows: np.ndarray, target_recall: float) -> int:
    """Smallest power-of-two `nprobe` whose recall@10 for the neighbours of stored videos (`queries`, the
    features of `rows`) reaches `target_recall`. With every list probed an IVF-Flat search is exact: that is
    the reference."""
    k = min(TUNING_K, index.ntotal - 1)
    if k < 1:
        return index.nlist
    index.nprobe = index.nlist
    truth = _neighbours_except_self(index, queries, rows, k)
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        if _recall(_neighbours_except_self(index, queries, rows, k), truth) >= target_recall:
            return nprobe
        nprobe *= 2
    return index.nlist


class VideoIndex:
    """Video features on disk plus a FAISS index over them; search with text or video features."""

    def __init__(self, dataset: Dataset, settings: dict[str, Any]):
        self.dataset = dataset
        self.settings = settings
        self._apply_search_settings()

    @property
    def dim(self) -> int:
        return self.settings["dim"]

    @property
    def index_type(self) -> str:
        return self.settings["index_type"]

    def __len__(self) -> int:
        return len(self.dataset)

    @classmethod
    def build(
        cls,
        features: Any,
        videos: Sequence[str],
        metadata: dict[str, Sequence[Any]] | None = None,
        index_type: str = "auto",
        **index_kwargs: Any,
    ) -> "VideoIndex":
        """Store `features` (N, D) of `videos` (N paths or ids) with optional metadata columns, and index them.

        Features are L2-normalised here. `index_kwargs` go to `from_dataset`.
        """
        matrix = _as_matrix(features, "features")
        if len(matrix) == 0:
            raise ValueError("cannot index an empty set of videos")
        if len(videos) != len(matrix):
            raise ValueError(f"got {len(matrix)} feature rows but {len(videos)} videos")
        matrix = l2_normalize(matrix, "features")
        columns: dict[str, Any] = {VIDEO_COLUMN: [str(video) for video in videos]}
        for name, values in (metadata or {}).items():
            if name in (VIDEO_COLUMN, FEATURES_COLUMN):
                raise ValueError(f"metadata column {name!r} clashes with a column the index keeps itself")
            if len(values) != len(matrix):
                raise ValueError(f"metadata column {name!r} has {len(values)} values for {len(matrix)} videos")
            columns[name] = list(values)
        # A fixed-size list array over the matrix' own buffer: no per-row Python objects at a million videos.
        columns[FEATURES_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
        # A fingerprint given up front: hashing the table for one costs several times its memory.
        dataset = Dataset(InMemoryTable(pa.table(columns)), fingerprint=uuid.uuid4().hex)
        return cls.from_dataset(dataset, index_type=index_type, **index_kwargs)

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        index_type: str = "auto",
        flat_max_size: int = FLAT_INDEX_MAX_SIZE,
        target_recall: float = 0.95,
        seed: int = 0,
    ) -> "VideoIndex":
        """Index a dataset that already has a `video` column and L2-normalised `features` (e.g. written to disk
        while embedding a large collection)."""
        import faiss

        for column in (VIDEO_COLUMN, FEATURES_COLUMN):
            if column not in dataset.column_names:
                raise ValueError(f"the dataset has no {column!r} column (columns: {dataset.column_names})")
        if len(dataset) == 0:
            raise ValueError("cannot index an empty set of videos")
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        rng = np.random.default_rng(seed)
        sample_rows = np.sort(rng.choice(len(dataset), size=min(len(dataset), 1000), replace=False))
        sample = _read_features(dataset, sample_rows.tolist())
        if sample.ndim != 2:
            raise ValueError("the features column must hold one fixed-length vector per video")
        if not np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-3):
            raise ValueError("features must be L2-normalised (inner product is used as cosine similarity)")
        dim = sample.shape[1]
        if index_type == "auto":
            index_type = choose_index_type(len(dataset), flat_max_size)
        settings: dict[str, Any] = {"index_type": index_type, "dim": dim, "num_videos": len(dataset)}
        if index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = ivf_num_lists(len(dataset))
            index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            # A random sample, not the first rows: a store written folder by folder is sorted by content.
            train_size = min(len(dataset), IVF_TRAINING_POINTS_PER_LIST * nlist)
            train_rows = np.sort(rng.choice(len(dataset), size=train_size, replace=False))
            index.train(_read_features(dataset, train_rows.tolist()))
            settings["nlist"] = nlist
            # Read before the index is attached: every formatted view of the dataset would copy the index.
            tuning_rows = np.sort(rng.choice(len(dataset), size=min(TUNING_QUERIES, len(dataset)), replace=False))
            tuning_queries = _read_features(dataset, tuning_rows.tolist())
        dataset.add_faiss_index(FEATURES_COLUMN, custom_index=index, batch_size=10_000)
        if index_type == "ivf":
            settings["nprobe"] = _tune_nprobe(index, tuning_queries, tuning_rows, target_recall)
            settings["target_recall"] = target_recall
        return cls(dataset, settings)

    def _apply_search_settings(self) -> None:
        if "nprobe" in self.settings:
            self.dataset.get_index(FEATURES_COLUMN).faiss_index.nprobe = self.settings["nprobe"]

    def save(self, directory: str | Path) -> None:
        """Write the dataset (Arrow), the FAISS index and the search settings to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.dataset.save_faiss_index(FEATURES_COLUMN, directory / INDEX_FILE)
        # save_to_disk refuses a dataset with an attached index: detach it, save, reattach the saved copy.
        self.dataset.drop_index(FEATURES_COLUMN)
        self.dataset.save_to_disk(str(directory))
        self.dataset.load_faiss_index(FEATURES_COLUMN, directory / INDEX_FILE)
        self._apply_search_settings()
        (directory / CONFIG_FILE).write_text(json.dumps(self.settings, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "VideoIndex":
        """Reopen a saved index; the features stay memory-mapped on disk."""
        directory = Path(directory)
        for name in (CONFIG_FILE, INDEX_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a saved video index: {name} is missing")
        settings = json.loads((directory / CONFIG_FILE).read_text())
        dataset = load_from_disk(str(directory))
        dataset.load_faiss_index(FEATURES_COLUMN, directory / INDEX_FILE)
        if dataset.get_index(FEATURES_COLUMN).faiss_index.ntotal != len(dataset):
            raise ValueError(f"{directory}: the index and the stored features hold different numbers of videos")
        return cls(dataset, settings)

    def search(self, query_features: Any, k: int = 10) -> list[list[VideoHit]]:
        """The `k` most similar videos to each query (Q, D) or (D,), best first, with cosine similarities."""
        queries = _as_matrix(query_features, "query_features")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query features have dimension {queries.shape[1]}, the index holds {self.dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = l2_normalize(queries, "query_features")
        results = self.dataset.search_batch(FEATURES_COLUMN, queries, k=min(k, len(self)))
        # FAISS pads with row -1 when a probed part of an IVF index holds fewer than k videos.
        kept = [[(row, score) for row, score in zip(rows, scores) if row >= 0] for rows, scores in
                zip(results.total_indices, results.total_scores)]
        all_rows = [row for hits in kept for row, _ in hits]
        videos = iter(self.dataset[VIDEO_COLUMN][all_rows] if all_rows else [])
        return [[VideoHit(next(videos), float(score), int(row)) for row, score in hits] for hits in kept]
