"""Retrieval metrics against hand-computed cases (SPEC.md section 6)."""

import math
from pathlib import Path

import pytest
import torch

from training.retrieval import dual_softmax, rank_metrics, retrieval_metrics, similarity_metrics

METRIC_DIR = Path(__file__).resolve().parents[1] / "training" / "metrics" / "clip_vip_retrieval"


def test_a_tie_with_a_wrong_video_is_not_a_hit():
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3], [0.4, 0.4, 0.4]])
    metrics = similarity_metrics(similarity, torch.tensor([0, 1, 2]))
    # text ranks 2 (one tie), 1, 3 (two ties); every video's own text is its strict best.
    assert metrics["t2v_r1"] == pytest.approx(100 / 3)
    assert metrics["t2v_r5"] == 100.0
    assert metrics["t2v_medr"] == 2.0
    assert metrics["t2v_meanr"] == 2.0
    assert (metrics["v2t_r1"], metrics["v2t_medr"], metrics["v2t_meanr"]) == (100.0, 1.0, 1.0)


def test_several_texts_per_video_video_ranks_by_its_best_text():
    similarity = torch.tensor([[0.1, 0.6], [0.25, 0.2], [0.3, 0.3], [0.0, 0.8]])
    metrics = similarity_metrics(similarity, torch.tensor([0, 0, 1, 1]))
    # texts: 2, 1, 2 (tie), 1. video 0: best own text 1 (0.25) is beaten by text 2 (0.3) -> 2; video 1: 1.
    assert (metrics["t2v_r1"], metrics["t2v_medr"], metrics["t2v_meanr"]) == (50.0, 1.5, 1.5)
    assert (metrics["v2t_r1"], metrics["v2t_r5"], metrics["v2t_medr"], metrics["v2t_meanr"]) == (50.0, 100.0, 1.5, 1.5)


def test_dual_softmax_weights_each_video_column_by_a_softmax_over_texts():
    similarity = torch.tensor([[0.2, 0.1], [0.1, 0.3]], dtype=torch.float64)
    top, bottom = 1 / (1 + math.exp(-10)), math.exp(-10) / (1 + math.exp(-10))
    low, high = math.exp(-20) / (1 + math.exp(-20)), 1 / (1 + math.exp(-20))
    expected = torch.tensor([[0.2 * top, 0.1 * low], [0.1 * bottom, 0.3 * high]], dtype=torch.float64)
    torch.testing.assert_close(dual_softmax(similarity), expected)


def test_dsl_metrics_rank_the_reweighted_matrix():
    # Text 0 prefers video 1 (0.52 > 0.50), but video 1 is far closer to text 1, so DSL suppresses that column.
    similarity = torch.tensor([[0.50, 0.52], [0.30, 0.90]])
    metrics = similarity_metrics(similarity, torch.tensor([0, 1]), dsl=True)
    assert metrics["t2v_r1"] == 50.0
    assert metrics["dsl_t2v_r1"] == 100.0
    assert metrics["dsl_v2t_r1"] == 100.0
    prefixes = ("t2v", "v2t", "dsl_t2v", "dsl_v2t")
    suffixes = ("r1", "r5", "r10", "medr", "meanr")
    assert set(metrics) == {f"{prefix}_{suffix}" for prefix in prefixes for suffix in suffixes}
    assert not any(key.startswith("dsl_") for key in similarity_metrics(similarity, torch.tensor([0, 1])))


def test_rank_summaries_are_percent_recalls_and_numpy_median():
    metrics = rank_metrics(torch.tensor([1, 2, 4, 10]), "t2v")
    assert metrics == {"t2v_r1": 25.0, "t2v_r5": 75.0, "t2v_r10": 100.0, "t2v_medr": 3.0, "t2v_meanr": 4.25}


def test_untied_ranks_match_position_in_a_descending_sort():
    generator = torch.Generator().manual_seed(0)
    texts, videos = torch.randn(12, 6, generator=generator), torch.randn(12, 6, generator=generator)
    metrics = retrieval_metrics(texts, videos, torch.arange(12))
    similarity = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(videos, dim=-1).T
    for prefix, scores in (("t2v", similarity), ("v2t", similarity.T)):
        ranks = [scores[i].argsort(descending=True).tolist().index(i) + 1 for i in range(12)]
        assert metrics[f"{prefix}_meanr"] == pytest.approx(sum(ranks) / 12)
        assert metrics[f"{prefix}_r1"] == pytest.approx(100 * sum(rank == 1 for rank in ranks) / 12)


def test_features_are_normalised_before_comparison():
    generator = torch.Generator().manual_seed(1)
    texts, videos = torch.randn(6, 4, generator=generator), torch.randn(3, 4, generator=generator)
    text_to_video = torch.tensor([0, 1, 2, 0, 1, 2])
    scaled = retrieval_metrics(texts * torch.rand(6, 1, generator=generator) * 5, videos * 3, text_to_video, dsl=True)
    assert scaled == retrieval_metrics(texts, videos, text_to_video, dsl=True)


def test_evaluate_module_loads_offline_and_accumulates_batches():
    evaluate = pytest.importorskip("evaluate")
    generator = torch.Generator().manual_seed(2)
    similarity = torch.rand(7, 3, generator=generator)
    text_to_video = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    metric = evaluate.load(str(METRIC_DIR))
    metric.add_batch(predictions=similarity[:4].tolist(), references=text_to_video[:4].tolist())
    metric.add_batch(predictions=similarity[4:].tolist(), references=text_to_video[4:].tolist())
    assert metric.compute(dsl=True) == similarity_metrics(similarity, text_to_video, dsl=True)
