"""Omnisource Cross-modal Learning (OCL) losses of CLIP-ViP (SPEC.md section 4).

Sources of a batch of `B` clips, as keys of a features dict: `"video"` (V, the clip), `"frame"` (F, its middle
frame as a one-frame video), `"text"` (S, the clip's subtitle or ASR text) and `"caption"` (C, an auxiliary
caption of the middle frame). Row `i` of every source belongs to clip `i`. Features are L2-normalised; the
logit scale is the model's learned *log* scale (`logit_scale` parameter), exponentiated here as the authors do.

Terms, each made of cross-entropies whose target is the matching pair, each cross-entropy a mean over its
query rows (as `F.cross_entropy` computes it, and as the authors' losses do):
- `v-s`, `v-c`, `f-c`: symmetric InfoNCE (visual-to-text and text-to-visual), two cross-entropies.
- `v-sc`: text-to-video for S and for C, and video-to-text with S and C in one softmax (for video `i`, the
  positive `s_i` or `c_i` against the negatives `s_j, c_j` for `j != i`), four cross-entropies.
`"v-sc,f-c"` (six cross-entropies) is the authors' post-pretraining objective, `"v-s"` their fine-tuning one. The
authors add the cross-entropies (`reduction="sum"`); `reduction="mean"` divides by their number (for `"v-s"` that
is CLIP's loss).
"""

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, world_size

SOURCES = {"v": "video", "f": "frame", "s": "text", "c": "caption"}
OCL_TERMS = ("v-s", "v-c", "f-c", "v-sc")
REDUCTIONS = ("sum", "mean")


def info_nce(queries: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Per-query InfoNCE cross-entropy.

    Args:
        queries: `(n, d)` normalised features, query `i` being pair `offset + i`.
        keys: `(N, d)` normalised features of all pairs.
        scale: the exponentiated logit scale.
        offset: index of the first query's pair among the keys.

    Returns:
        `(n,)` cross-entropies of `softmax(scale * queries @ keys.T)` with target `offset + i`.
    """
    logits = scale * queries @ keys.T
    targets = torch.arange(offset, offset + queries.shape[0], device=queries.device)
    return F.cross_entropy(logits, targets, reduction="none")


def joint_text_nce(
    videos: torch.Tensor, texts: torch.Tensor, captions: torch.Tensor, scale: torch.Tensor, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-to-text cross-entropies of the `v-sc` term, S and C sharing one softmax.

    For video `g = offset + i` the candidates are its positive (`s_g`, resp. `c_g`) and the negatives `s_j` and
    `c_j` for `j != g`: the other positive is left out of each softmax.

    Args:
        videos: `(n, d)` normalised video features (queries).
        texts: `(N, d)` normalised S features of all pairs.
        captions: `(N, d)` normalised C features of all pairs.
        scale: the exponentiated logit scale.
        offset: index of the first video's pair.

    Returns:
        Two `(n,)` tensors: the cross-entropies with positive `s_g`, and with positive `c_g`.
    """
    num_pairs = texts.shape[0]
    text_logits = scale * videos @ texts.T
    caption_logits = scale * videos @ captions.T
    targets = torch.arange(offset, offset + videos.shape[0], device=videos.device)
    own_pair = F.one_hot(targets, num_pairs).bool()
    # Candidates are [all S, all C] with the other source's positive masked out; columns 0..N-1 are S, N..2N-1 C.
    with_text_positive = torch.cat([text_logits, caption_logits.masked_fill(own_pair, float("-inf"))], dim=1)
    with_caption_positive = torch.cat([text_logits.masked_fill(own_pair, float("-inf")), caption_logits], dim=1)
    return (
        F.cross_entropy(with_text_positive, targets, reduction="none"),
        F.cross_entropy(with_caption_positive, targets + num_pairs, reduction="none"),
    )


def parse_combination(combination: str) -> tuple[str, ...]:
    """Split a comma-separated combination such as `"v-sc,f-c"` into its terms, checking each is known."""
    terms = tuple(term.strip().lower() for term in combination.split(",") if term.strip())
    unknown = [term for term in terms if term not in OCL_TERMS]
    if unknown or not terms:
        raise ValueError(f"unknown OCL terms {unknown} in {combination!r}; choose from {', '.join(OCL_TERMS)}")
    if len(set(terms)) != len(terms):
        raise ValueError(f"repeated OCL term in {combination!r}")
    return terms


def required_sources(combination: str) -> set[str]:
    """The feature sources (`"video"`, `"frame"`, `"text"`, `"caption"`) a combination needs."""
    letters = {letter for term in parse_combination(combination) for letter in term.replace("-", "")}
    return {SOURCES[letter] for letter in letters}


def term_cross_entropies(
    term: str, rows: dict[str, torch.Tensor], columns: dict[str, torch.Tensor], scale: torch.Tensor, offset: int = 0
) -> list[torch.Tensor]:
    """Per-row cross-entropies of one OCL term: queries from `rows`, candidates from `columns` (all pairs)."""
    if term == "v-sc":
        return [
            *joint_text_nce(rows["video"], columns["text"], columns["caption"], scale, offset),
            info_nce(rows["text"], columns["video"], scale, offset),
            info_nce(rows["caption"], columns["video"], scale, offset),
        ]
    visual, text = (SOURCES[letter] for letter in term.split("-"))
    return [
        info_nce(rows[visual], columns[text], scale, offset),
        info_nce(rows[text], columns[visual], scale, offset),
    ]


def ocl_loss(
    features: dict[str, torch.Tensor],
    logit_scale: torch.Tensor,
    combination: str = "v-sc,f-c",
    reduction: str = "sum",
    gather: bool = True,
    local_loss: bool = False,
) -> torch.Tensor:
    """The OCL objective of a batch.

    Args:
        features: normalised `(B, d)` features by source (`"video"`, `"frame"`, `"text"`, `"caption"`); only the
            sources the combination needs are used.
        logit_scale: the learned log scale (scalar tensor); logits are `logit_scale.exp() * a @ b.T`.
        combination: comma-separated OCL terms, e.g. `"v-sc,f-c"` or `"v-s"`.
        reduction: `"sum"` of the cross-entropies (the authors') or their `"mean"`.
        gather: with several processes, gather every source over processes (with gradients) so that negatives
            span the global batch. Ignored without a process group.
        local_loss: with gathering, compute only this process's rows against all gathered columns. Each
            cross-entropy is then `world_size / global_rows` times the sum over this process's rows, so the mean
            of the processes' losses is the full loss and, after DDP's gradient averaging, the gradients equal the
            full form's (and single-process training on the global batch). The value differs between processes.

    Returns:
        The scalar loss.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    terms = parse_combination(combination)
    sources = required_sources(combination)
    if missing := sources - features.keys():
        raise KeyError(f"combination {combination!r} needs features for {sorted(missing)}")
    # Sorted: every process must issue its gathers in the same order.
    local = {name: features[name] for name in sorted(sources)}
    columns, offset = gather_with_grad(local) if gather else (local, 0)
    global_rows = next(iter(columns.values())).shape[0]
    if local_loss and gather and world_size() > 1:
        rows, row_weight = local, world_size() / global_rows
    else:
        rows, offset, row_weight = columns, 0, 1.0 / global_rows

    scale = logit_scale.exp()
    cross_entropies = [ce for term in terms for ce in term_cross_entropies(term, rows, columns, scale, offset)]
    loss = torch.stack([ce.sum() for ce in cross_entropies]).sum() * row_weight
    return loss / len(cross_entropies) if reduction == "mean" else loss
