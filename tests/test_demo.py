"""`clip-vip demo` end to end at a reduced size: the report's files exist and its table follows from the saved features."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_clip_vip.processing_clip_vip import decode_video
from training.cli import main
from training.retrieval import retrieval_metrics
from training.demo import pick_example_queries
from training.synthetic_data import COLORS, EVENTS, SHAPES, generate_moving_shapes, render_clip, sample_specs

MODELS = ("CLIP-ViP (video proxies)", "Full attention (ablation)", "Mean pooling (CLIP4Clip)")
KEYS = ("clip_vip", "full_attention", "mean_pooling")
COLUMNS = ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1", "v2t_r5", "v2t_r10", "v2t_medr", "order_accuracy")
SUBSETS = {"all queries": "all", "motion-dependent queries": "motion", "appear / disappear / recolour": "change"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main([
            "demo", "--output_dir", str(out_dir), "--num_train_clips", "24", "--num_test_clips", "14",
            "--num_frames", "4", "--image_size", "32", "--hidden_size", "32", "--max_steps", "3", "--batch_size", "8",
            "--warmup_steps", "1", "--dataloader_num_workers", "0", "--num_examples", "2",
        ])
    return out_dir, buffer.getvalue()


def table_rows(report: str) -> dict[tuple[str, str], list[float]]:
    """`(queries, model) -> the nine numbers` of the report's markdown table."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[1] in MODELS:
            rows[cells[0], cells[1]] = [float(cell) for cell in cells[2:]]
    return rows


def reference_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """Rank of the diagonal item in each row (one text per clip): 1 + wrong items scoring at least as high."""
    ranks = []
    for row, scores in enumerate(similarity):
        ranks.append(1 + sum(int(scores[col] >= scores[row]) for col in range(len(scores)) if col != row))
    return torch.tensor(ranks, dtype=torch.float64)


def reference_metrics(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    metrics = {f"{prefix}_r{k}": 100.0 * (ranks <= k).double().mean().item() for k in (1, 5, 10)}
    metrics[f"{prefix}_medr"] = float(np.median(ranks.numpy()))
    return metrics


def test_demo_writes_the_report_files_and_says_where_they_are(demo_run):
    out_dir, stdout = demo_run
    for name in ("report.md", "metrics.json", "features.pt", "training_curves.png", "retrieval_examples.png"):
        assert (out_dir / name).is_file(), name
    for name in ("training_curves.png", "retrieval_examples.png"):
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300
    for key in KEYS:
        assert (out_dir / "models" / key / "model.safetensors").is_file()
    assert str((out_dir / "report.md").resolve()) in stdout


def test_demo_says_the_middle_frame_captions_stand_in_for_a_captioning_model(demo_run):
    out_dir, stdout = demo_run
    for text in (stdout, (out_dir / "report.md").read_text()):
        assert "stand in for `clip-vip caption`" in text


def reference_order_accuracy(similarity: torch.Tensor, twin: torch.Tensor) -> torch.Tensor:
    """Per clip (its own query): 1 if the query scores the clip above its reversed twin, 0.5 on a tie, else 0."""
    scores = []
    for clip in range(len(twin)):
        own, reversed_twin = similarity[clip, clip].item(), similarity[clip, twin[clip]].item()
        scores.append(0.5 if abs(own - reversed_twin) <= 1e-6 else float(own > reversed_twin))
    return torch.tensor(scores, dtype=torch.float64)


def test_every_kind_of_clip_played_backwards_is_its_reversed_twin():
    specs = sample_specs(len(SHAPES) * len(COLORS) * len(EVENTS), np.random.default_rng(0), "clip")
    assert {spec.event for spec in specs} == set(EVENTS)
    for spec in specs:
        twin = spec.reversed()
        assert np.array_equal(render_clip(twin, 32, 8), render_clip(spec, 32, 8)[::-1]), spec
        assert twin.event != spec.event or twin.color != spec.color
        assert twin.reversed().event == spec.event and twin.reversed().color == spec.color


def test_an_odd_number_of_test_clips_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="num_test must be even"):
        generate_moving_shapes(tmp_path / "data", num_train=2, num_test=3)
    assert not (tmp_path / "data").exists()


def test_example_queries_are_the_first_of_each_kind_of_event_whatever_the_results():
    events = ["left", "changes", "left", "appears", "down", "disappears", "appears", "right"]
    records = [{"event": event} for event in events]
    assert pick_example_queries(records, 4) == [3, 5, 1, 0]
    assert pick_example_queries(records, 10) == [3, 5, 1, 0, 7, 4]


def test_test_clips_come_in_time_reversed_pairs_with_opposite_texts(demo_run):
    out_dir, _ = demo_run
    records = [json.loads(line) for line in (out_dir / "data" / "test.jsonl").read_text().splitlines()]
    for row, record in enumerate(records):
        twin = records[record["twin"]]
        assert twin["twin"] == row and twin["text"] != record["text"]
        frames = decode_video(out_dir / "data" / record["video"], 8, with_middle_frame=False).frames
        twin_frames = decode_video(out_dir / "data" / twin["video"], 8, with_middle_frame=False).frames
        # Same frames in reverse order, up to the H.264 coding of each file.
        assert np.abs(frames.astype(int) - twin_frames[::-1].astype(int)).mean() < 2.0


def test_report_table_equals_a_recomputation_from_the_saved_features(demo_run):
    out_dir, _ = demo_run
    saved = torch.load(out_dir / "features.pt", weights_only=True)
    subsets, twin = saved["subsets"], saved["twin"]
    rows = table_rows((out_dir / "report.md").read_text())
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert len(rows) == len(SUBSETS) * len(MODELS) and 0 < subsets["motion"].sum() < len(twin)
    assert torch.equal(subsets["change"], ~subsets["motion"]) and torch.equal(twin[twin], torch.arange(len(twin)))
    for key, model in zip(KEYS, MODELS):
        features = saved["features"][key]
        assert torch.equal(features["text_to_video"], torch.arange(len(twin)))  # one query per clip, in order
        similarity = F.normalize(features["text"], dim=-1) @ F.normalize(features["video"], dim=-1).T
        t2v, v2t = reference_ranks(similarity), reference_ranks(similarity.T)
        order = reference_order_accuracy(similarity, twin)
        for queries, subset in SUBSETS.items():
            mask = subsets[subset]
            expected = reference_metrics(t2v[mask], "t2v") | reference_metrics(v2t[mask], "v2t")
            expected["order_accuracy"] = 100 * order[mask].mean().item()
            if subset == "all":
                overall = retrieval_metrics(features["text"], features["video"], features["text_to_video"])
                ranked = COLUMNS[:-1]
                assert [overall[column] for column in ranked] == pytest.approx([expected[column] for column in ranked])
            assert rows[queries, model] == [round(expected[column], 1) for column in COLUMNS], (queries, model)
            for column in COLUMNS:
                assert metrics[key][subset][column] == pytest.approx(expected[column]), (key, subset, column)


def test_training_curves_come_from_each_models_logged_losses(demo_run):
    out_dir, _ = demo_run
    histories = json.loads((out_dir / "training_log.json").read_text())
    for key in KEYS:
        assert [entry["step"] for entry in histories[key] if "loss" in entry] == [1, 2, 3]
    assert "3 steps of batch 8" in (out_dir / "report.md").read_text()
