"""Zero-shot video classification: prompts, scores, and the whole path on generated clips with a tiny model."""

import numpy as np
import pytest
import torch

from modeling_clip_vip.modeling_clip_vip import ClipVipModel
from modeling_clip_vip.processing_clip_vip import ClipVipImageProcessor, ClipVipProcessor
from training.classification import build_prompts, classify_videos, zero_shot_scores
from training.video_fixtures import write_video

LABELS = ["red circle", "blue square", "green circle"]


def test_prompts_fill_the_template_in_label_order():
    assert build_prompts(["dog", "cat"], "a clip of a {} playing") == ["a clip of a dog playing", "a clip of a cat playing"]
    with pytest.raises(ValueError, match="must contain"):
        build_prompts(["dog"], "a video")


def test_scores_are_softmax_of_scaled_cosine_in_label_order():
    labels = torch.randn(3, 8)
    videos = torch.stack([2.0 * labels[2], labels[0] + 0.1 * torch.randn(8)])
    scores = zero_shot_scores(videos, labels, logit_scale=torch.tensor(4.6))

    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    assert scores.argmax(dim=1).tolist() == [2, 0]
    cosine = torch.nn.functional.cosine_similarity(videos[:, None], labels[None], dim=-1)
    torch.testing.assert_close(scores, (np.exp(4.6) * cosine).softmax(dim=1))
    reordered = zero_shot_scores(videos, labels[[2, 0, 1]], logit_scale=4.6)
    torch.testing.assert_close(reordered, scores[:, [2, 0, 1]])


def test_a_single_video_gives_one_row_and_mismatched_dims_are_named():
    assert zero_shot_scores(torch.randn(8), torch.randn(4, 8), 1.0).shape == (1, 4)
    with pytest.raises(ValueError, match="dimension 8, label features 6"):
        zero_shot_scores(torch.randn(2, 8), torch.randn(4, 6), 1.0)


def test_classifying_generated_clips_matches_the_models_own_logits(tiny_config, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = ClipVipModel(tiny_config).eval()
    processor = ClipVipProcessor(
        image_processor=ClipVipImageProcessor(size={"height": 64, "width": 64}, num_frames=4), tokenizer=tokenizer
    )
    rng = np.random.default_rng(0)
    clips = [
        write_video(tmp_path / f"clip{i}.mp4", 8, size=(64, 48), frame_fn=lambda _, c=color: np.full((48, 64, 3), c, np.uint8))
        for i, color in enumerate(rng.integers(0, 255, size=(2, 3)))
    ]

    scores = classify_videos(model, processor, clips, LABELS, template="a {} moves")

    assert scores.shape == (2, len(LABELS))
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    inputs = processor(text=build_prompts(LABELS, "a {} moves"), videos=clips)
    with torch.no_grad():
        expected = model(**inputs).logits_per_video.softmax(dim=1)
    torch.testing.assert_close(scores, expected)
    reversed_scores = classify_videos(model, processor, clips, LABELS[::-1], template="a {} moves")
    torch.testing.assert_close(reversed_scores, scores.flip(1))
