"""OCL losses against direct references written with loops over the batch (SPEC.md section 4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import info_nce, joint_text_nce, ocl_loss, parse_combination, required_sources

BATCH, DIM = 5, 8


def random_features(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: F.normalize(torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64), dim=-1).requires_grad_()
        for name in ("video", "frame", "text", "caption")
    }


def cross_entropy_of(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    """-log softmax(logits)[target], from a python list of scalar logits."""
    stacked = torch.stack(logits)
    return torch.logsumexp(stacked, dim=0) - stacked[target]


def reference_directional(queries: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean over queries i of the cross-entropy of [scale * q_i.k_j for every j] with target i."""
    losses = []
    for i in range(len(queries)):
        logits = [scale * torch.dot(queries[i], keys[j]) for j in range(len(keys))]
        losses.append(cross_entropy_of(logits, i))
    return torch.stack(losses).mean()


def reference_joint_video_to_text(video, text, caption, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC: for video i, [v_i.s_i, v_i.s_j (j != i), v_i.c_j (j != i)] target 0; likewise with v_i.c_i first."""
    with_text, with_caption = [], []
    for i in range(len(video)):
        negatives = [scale * torch.dot(video[i], text[j]) for j in range(len(text)) if j != i]
        negatives += [scale * torch.dot(video[i], caption[j]) for j in range(len(caption)) if j != i]
        with_text.append(cross_entropy_of([scale * torch.dot(video[i], text[i])] + negatives, 0))
        with_caption.append(cross_entropy_of([scale * torch.dot(video[i], caption[i])] + negatives, 0))
    return torch.stack(with_text).mean(), torch.stack(with_caption).mean()


def reference_cross_entropies(term: str, features: dict[str, torch.Tensor], scale: torch.Tensor) -> list[torch.Tensor]:
    v, f, s, c = (features[name] for name in ("video", "frame", "text", "caption"))
    if term == "v-sc":
        return [*reference_joint_video_to_text(v, s, c, scale),
                reference_directional(s, v, scale), reference_directional(c, v, scale)]
    visual, text = {"v-s": (v, s), "v-c": (v, c), "f-c": (f, c)}[term]
    return [reference_directional(visual, text, scale), reference_directional(text, visual, scale)]


def test_info_nce_is_the_per_query_cross_entropy_against_all_keys():
    features, scale = random_features(), torch.tensor(20.0, dtype=torch.float64)
    ours = info_nce(features["video"], features["text"], scale).mean()
    torch.testing.assert_close(ours, reference_directional(features["video"], features["text"], scale))


def test_info_nce_offset_selects_the_targets_of_a_block_of_rows():
    features, scale = random_features(), torch.tensor(20.0, dtype=torch.float64)
    full = info_nce(features["video"], features["text"], scale)
    torch.testing.assert_close(info_nce(features["video"][2:4], features["text"], scale, offset=2), full[2:4])


def test_vsc_video_to_text_puts_both_text_sources_in_one_softmax():
    features, scale = random_features(1), torch.tensor(15.0, dtype=torch.float64)
    with_text, with_caption = joint_text_nce(features["video"], features["text"], features["caption"], scale)
    expected_text, expected_caption = reference_joint_video_to_text(
        features["video"], features["text"], features["caption"], scale
    )
    torch.testing.assert_close(with_text.mean(), expected_text)
    torch.testing.assert_close(with_caption.mean(), expected_caption)


def test_vsc_is_not_the_sum_of_separate_v_s_and_v_c_softmaxes():
    features, log_scale = random_features(2), torch.tensor(math.log(30.0), dtype=torch.float64)
    assert not torch.isclose(ocl_loss(features, log_scale, "v-sc"), ocl_loss(features, log_scale, "v-s,v-c"))


@pytest.mark.parametrize(
    "combination, terms",
    [
        ("v-sc,f-c", ["v-sc", "f-c"]),
        ("v-s", ["v-s"]),
        ("v-c", ["v-c"]),
        ("f-c", ["f-c"]),
        ("v-sc", ["v-sc"]),
        ("v-s, v-c,f-c", ["v-s", "v-c", "f-c"]),
    ],
)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_combination_reduces_its_cross_entropies_with_loss_and_gradients_of_the_reference(combination, terms, reduction):
    features = random_features(3)
    log_scale = torch.tensor(math.log(25.0), dtype=torch.float64, requires_grad=True)
    ours = ocl_loss(features, log_scale, combination, reduction)
    our_grads = torch.autograd.grad(ours, [log_scale, *features.values()], allow_unused=True)

    cross_entropies = [ce for term in terms for ce in reference_cross_entropies(term, features, log_scale.exp())]
    expected = torch.stack(cross_entropies).sum()
    if reduction == "mean":
        expected = expected / len(cross_entropies)
    expected_grads = torch.autograd.grad(expected, [log_scale, *features.values()], allow_unused=True)

    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)


def test_default_objective_is_six_cross_entropies_summed():
    features = random_features(4)
    log_scale = torch.tensor(math.log(100.0), dtype=torch.float64)
    summed = ocl_loss(features, log_scale)
    torch.testing.assert_close(ocl_loss(features, log_scale, "v-sc,f-c", "mean") * 6, summed)


def test_gather_flags_change_nothing_without_a_process_group():
    features, log_scale = random_features(5), torch.tensor(3.0, dtype=torch.float64)
    plain = ocl_loss(features, log_scale, gather=False)
    torch.testing.assert_close(ocl_loss(features, log_scale, gather=True, local_loss=True), plain)
    torch.testing.assert_close(ocl_loss(features, log_scale, gather=True, local_loss=False), plain)


def test_parse_combination_rejects_unknown_and_repeated_terms():
    assert parse_combination(" V-SC , f-c ") == ("v-sc", "f-c")
    for bad in ("v-x", "", "v-s,v-s", "vs"):
        with pytest.raises(ValueError):
            parse_combination(bad)


def test_missing_source_is_named():
    assert required_sources("v-sc,f-c") == {"video", "frame", "text", "caption"}
    features = random_features()
    del features["frame"]
    with pytest.raises(KeyError, match="frame"):
        ocl_loss(features, torch.tensor(1.0), "v-sc,f-c")
    ocl_loss(features, torch.tensor(1.0), "v-sc")
