"""The video-search feature store and its FAISS index, on random features (no model needed)."""

import numpy as np
import pytest
import torch

from training.search_index import INDEX_FILE, VideoIndex, choose_index_type

DIM = 16


def clustered_features(num: int, seed: int = 0) -> np.ndarray:
    """Points around a few centres, like real embeddings (uniform noise has no neighbours worth finding)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, DIM)).astype(np.float32)
    return centres[rng.integers(8, size=num)] + 0.3 * rng.standard_normal((num, DIM)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def videos_for(num: int) -> list[str]:
    return [f"clips/{row:04d}.mp4" for row in range(num)]


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return clustered_features(400)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_each_video_is_its_own_nearest_neighbour(features, index_type):
    index = VideoIndex.build(features, videos_for(len(features)), index_type=index_type)
    hits = index.search(features[:50], k=1)
    assert [row_hits[0].video for row_hits in hits] == videos_for(50)
    assert all(row_hits[0].score == pytest.approx(1.0, abs=1e-5) for row_hits in hits)


def test_results_are_ranked_by_cosine_similarity(features):
    index = VideoIndex.build(features, videos_for(len(features)), index_type="flat")
    query = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    hits = index.search(query, k=5)[0]
    similarities = cosine(query, features)
    assert [hit.row for hit in hits] == np.argsort(-similarities)[:5].tolist()
    assert [hit.video for hit in hits] == [videos_for(len(features))[hit.row] for hit in hits]
    np.testing.assert_allclose([hit.score for hit in hits], np.sort(similarities)[::-1][:5], rtol=1e-5)


def test_tuned_ivf_finds_what_exact_search_finds(features):
    index = VideoIndex.build(features, videos_for(len(features)), index_type="ivf", target_recall=0.95)
    assert 1 <= index.settings["nprobe"] <= index.settings["nlist"]
    queries = clustered_features(100, seed=2)
    exact = np.argsort(-cosine(queries, features), axis=1)[:, :10]
    found = [[hit.row for hit in row_hits] for row_hits in index.search(queries, k=10)]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.8


def test_saved_index_reopens_with_the_same_results_from_disk(features, tmp_path):
    index = VideoIndex.build(
        features, videos_for(len(features)), metadata={"label": [row % 3 for row in range(len(features))]},
        index_type="ivf",
    )
    queries = clustered_features(20, seed=3)
    before = index.search(queries, k=5)
    index.save(tmp_path / "store")

    reopened = VideoIndex.load(tmp_path / "store")

    assert reopened.search(queries, k=5) == before
    assert reopened.settings == index.settings
    assert reopened.dataset.cache_files, "features should be memory-mapped from the saved Arrow file"
    assert reopened.dataset[7]["label"] == 7 % 3
    assert index.search(queries, k=5) == before, "saving must leave the index it saved searchable"


def test_auto_picks_flat_for_small_sets_and_ivf_above_the_threshold(features):
    assert choose_index_type(99, flat_max_size=100) == "flat"
    assert choose_index_type(100, flat_max_size=100) == "ivf"
    small = VideoIndex.build(features[:99], videos_for(99), flat_max_size=100)
    large = VideoIndex.build(features, videos_for(len(features)), flat_max_size=100)
    assert (small.index_type, large.index_type) == ("flat", "ivf")


def test_tensor_queries_and_k_beyond_the_collection():
    features = clustered_features(6)
    index = VideoIndex.build(torch.from_numpy(features), videos_for(6))
    hits = index.search(torch.from_numpy(features[:2]), k=50)
    assert [len(row_hits) for row_hits in hits] == [6, 6]


def test_bad_inputs_are_named(features, tmp_path):
    index = VideoIndex.build(features, videos_for(len(features)))
    with pytest.raises(ValueError, match="dimension 8, the index holds 16"):
        index.search(np.ones(8, dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        VideoIndex.build(np.zeros((0, DIM), dtype=np.float32), [])
    with pytest.raises(ValueError, match="3 feature rows but 2 videos"):
        VideoIndex.build(features[:3], videos_for(2))
    with pytest.raises(ValueError, match="all-zero rows"):
        VideoIndex.build(np.zeros((2, DIM), dtype=np.float32), videos_for(2))
    with pytest.raises(ValueError, match="index_type"):
        VideoIndex.build(features, videos_for(len(features)), index_type="hnsw")
    with pytest.raises(ValueError, match="metadata column 'label' has 1 values"):
        VideoIndex.build(features[:3], videos_for(3), metadata={"label": [0]})

    index.save(tmp_path / "store")
    (tmp_path / "store" / INDEX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{INDEX_FILE} is missing"):
        VideoIndex.load(tmp_path / "store")
