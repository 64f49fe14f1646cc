"""Video-search index benchmark on random normalised features: build time, query latency, recall@10.

For each size the index type `auto` chooses is measured, with exact flat search beside it up to
`--flat-up-to` videos and FAISS HNSW (M=32, efSearch=128; not offered by `VideoIndex`) up to `--hnsw-up-to`. Recall@10 is against exact (brute-force) search for fresh random queries. Two
distributions: `uniform` on the sphere (no structure: the worst case for any approximate index) and
`clustered` (points scattered around 1024 centres, closer to real embeddings). One JSON line per case.

    python benchmarks/bench_index.py --sizes 10000 100000 1000000 --distribution uniform
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from training.search_index import VideoIndex, l2_normalize

NUM_CENTRES = 1024
# Within a cluster a point's cosine to its centre is about 1/sqrt(1 + spread**2).
CLUSTER_SPREAD = 1.0
HNSW_M = 32
HNSW_EF_SEARCH = 128


def random_features(num: int, dim: int, distribution: str, rng: np.random.Generator, centres: np.ndarray):
    noise = rng.standard_normal((num, dim), dtype=np.float32)
    if distribution == "uniform":
        return l2_normalize(noise, "features")
    points = centres[rng.integers(len(centres), size=num)] + CLUSTER_SPREAD / np.sqrt(dim) * noise
    return l2_normalize(points, "features")


def exact_top_k(features: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Brute-force top-k rows by inner product, in chunks so a million rows never make one huge score matrix."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(features), chunk):
        scores = queries @ features[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def measure(search: Callable[[np.ndarray, int], list[list[int]]], queries: np.ndarray, truth: np.ndarray, batch: int, k: int) -> dict:
    """Median latency of single and batched queries, and recall@k against `truth`, of `search(queries, k) -> rows`."""
    search(queries[:batch], k)  # warm-up: first calls pay for thread start-up and page faults
    single = []
    for query in queries[:100]:
        start = time.perf_counter()
        search(query[None], k)
        single.append(time.perf_counter() - start)
    batched = []
    for start_row in range(0, len(queries) - batch + 1, batch):
        start = time.perf_counter()
        search(queries[start_row : start_row + batch], k)
        batched.append(time.perf_counter() - start)
    found = search(queries, k)
    recall = np.mean([len(set(rows) & set(row_truth)) / k for rows, row_truth in zip(found, truth)])
    return {
        "query_ms_batch_1_median": round(1000 * statistics.median(single), 3),
        f"query_ms_per_query_batch_{batch}_median": round(1000 * statistics.median(batched) / batch, 3),
        f"recall_at_{k}": round(float(recall), 4),
    }


def rows_of(index: VideoIndex) -> Callable[[np.ndarray, int], list[list[int]]]:
    return lambda queries, k: [[hit.row for hit in hits] for hits in index.search(queries, k)]


def build_hnsw(features: np.ndarray, ef_search: int) -> Callable[[np.ndarray, int], list[list[int]]]:
    """A FAISS HNSW index (M=32) over `features`, for comparison only: `VideoIndex` does not offer it."""
    import faiss

    index = faiss.IndexHNSWFlat(features.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.add(features)
    index.hnsw.efSearch = ef_search
    return lambda queries, k: index.search(queries, k)[1].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--distribution", choices=["uniform", "clustered"], default="uniform")
    parser.add_argument("--flat-up-to", type=int, default=100_000, help="also measure exact flat search up to this size")
    parser.add_argument("--hnsw-up-to", type=int, default=100_000, help="also measure FAISS HNSW up to this size")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = l2_normalize(rng.standard_normal((NUM_CENTRES, args.dim), dtype=np.float32), "centres")
    queries = random_features(args.queries, args.dim, args.distribution, rng, centres)
    for size in args.sizes:
        features = random_features(size, args.dim, args.distribution, rng, centres)
        videos = [f"clip_{row:07d}.mp4" for row in range(size)]
        truth = exact_top_k(features, queries, args.k)
        index_types = ["auto"] + (["flat"] if size <= args.flat_up_to else [])
        for index_type in index_types + (["hnsw"] if size <= args.hnsw_up_to else []):
            case = {"num_videos": size, "dim": args.dim, "distribution": args.distribution, "requested": index_type}
            start = time.perf_counter()
            if index_type == "hnsw":
                search = build_hnsw(features, HNSW_EF_SEARCH)
                case.update(index_type="hnsw", hnsw_m=HNSW_M, ef_search=HNSW_EF_SEARCH)
            else:
                index = VideoIndex.build(features, videos, index_type=index_type)
                search = rows_of(index)
                case.update({key: value for key, value in index.settings.items() if key not in ("dim", "num_videos")})
            case["build_s"] = round(time.perf_counter() - start, 2)
            case.update(measure(search, queries, truth, args.batch, args.k))
            print(json.dumps(case), flush=True)
            del search

if __name__ == "__main__":
    main()
