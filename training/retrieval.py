"""Text-video retrieval metrics (SPEC.md section 6).

Ranks count from 1 and ties are broken against the true item: a query's rank is one plus the number of wrong
candidates scoring at least as high as its best true candidate. Several texts may describe one video: each text's
target is its video, and a video's targets are all its texts, so its video-to-text rank is that of its
best-ranked text (the usual protocol). With one text per video and no ties this is exactly the authors' ranking.
"""

import torch
import torch.nn.functional as F

DSL_TEMPERATURE = 100.0


def dual_softmax(similarity: torch.Tensor, temperature: float = DSL_TEMPERATURE) -> torch.Tensor:
    """DSL re-weighting `sim * softmax(temperature * sim)` over the texts (dim 0) of each video column.

    Args:
        similarity: `(num_texts, num_videos)` cosine similarities.
    """
    return similarity * torch.softmax(temperature * similarity, dim=0)


def retrieval_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each query's best true candidate, ties counted against it.

    Args:
        scores: `(num_queries, num_candidates)`, higher is better.
        targets: `(num_queries, num_candidates)` bool, the true candidates of each query (at least one).

    Returns:
        `(num_queries,)` long ranks, from 1.
    """
    if not targets.any(dim=1).all():
        raise ValueError("every query needs at least one true candidate")
    best_true = scores.masked_fill(~targets, float("-inf")).amax(dim=1, keepdim=True)
    return 1 + ((scores >= best_true) & ~targets).sum(dim=1)


def rank_metrics(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """R@1, R@5, R@10 (percent), median and mean rank, keyed `{prefix}_r1` ... `{prefix}_meanr`."""
    ranks = ranks.double()
    metrics = {f"{prefix}_r{k}": 100.0 * (ranks <= k).double().mean().item() for k in (1, 5, 10)}
    # The median of an even count is the mean of the two middle ranks (numpy's, the authors' convention).
    metrics[f"{prefix}_medr"] = ranks.quantile(0.5).item()
    metrics[f"{prefix}_meanr"] = ranks.mean().item()
    return metrics


def similarity_metrics(similarity: torch.Tensor, text_to_video: torch.Tensor, dsl: bool = False) -> dict[str, float]:
    """Text-to-video and video-to-text metrics of a similarity matrix.

    Args:
        similarity: `(num_texts, num_videos)` text-video similarities (ranked in their own dtype).
        text_to_video: `(num_texts,)` long, the index of each text's video.
        dsl: also report the metrics of the DSL-re-weighted matrix, with a `dsl_` prefix.

    Returns:
        `t2v_r1`, `t2v_r5`, `t2v_r10`, `t2v_medr`, `t2v_meanr`, the same for `v2t_`, and with `dsl` the same
        ten with a `dsl_` prefix (`dsl_t2v_r1`, ...).
    """
    targets = F.one_hot(text_to_video.long(), similarity.shape[1]).bool()
    variants = {"": similarity, "dsl_": dual_softmax(similarity)} if dsl else {"": similarity}
    metrics = {}
    for prefix, scores in variants.items():
        metrics |= rank_metrics(retrieval_ranks(scores, targets), f"{prefix}t2v")
        metrics |= rank_metrics(retrieval_ranks(scores.T, targets.T), f"{prefix}v2t")
    return metrics


def retrieval_metrics(
    text_features: torch.Tensor, video_features: torch.Tensor, text_to_video: torch.Tensor, dsl: bool = False
) -> dict[str, float]:
    """Retrieval metrics of text and video features (L2-normalised here, compared in float32 as the authors do).

    Args:
        text_features: `(num_texts, d)`.
        video_features: `(num_videos, d)`.
        text_to_video: `(num_texts,)` long, the index of each text's video in `video_features`.
        dsl: also report the DSL variants (`dsl_t2v_r1`, ...).
    """
    similarity = F.normalize(text_features.float(), dim=-1) @ F.normalize(video_features.float(), dim=-1).T
    return similarity_metrics(similarity, text_to_video, dsl)
