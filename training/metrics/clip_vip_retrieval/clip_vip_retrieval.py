"""CLIP-ViP text-video retrieval metrics as an `evaluate` module: `evaluate.load("training/metrics/clip_vip_retrieval")`.

Each example is one text query: its prediction is its row of similarities to all videos, its reference the index
of its video. The computation is `training.retrieval.similarity_metrics` (this module imports the installed
package rather than repeating it).
"""

import datasets
import evaluate
import numpy as np
import torch

from training.retrieval import similarity_metrics

_DESCRIPTION = """Text-to-video and video-to-text retrieval: R@1, R@5, R@10 (percent), median and mean rank (ranks
from 1, ties counted against the true item), optionally with dual softmax (DSL) re-weighting. Several texts may
describe one video; a video's rank is that of its best-ranked text."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row per text, its similarities to every video (all rows the same length).
    references: the index of each text's video.
    dsl: also report the DSL variants, prefixed `dsl_`.
Returns:
    t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_meanr, the same with v2t_, and with dsl=True the same with dsl_.
Example:
    >>> metric = evaluate.load("training/metrics/clip_vip_retrieval")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])["t2v_r1"]
    100.0
"""

_CITATION = """@inproceedings{xue2023clipvip,
  title={CLIP-ViP: Adapting Pre-trained Image-Text Model to Video-Language Representation Alignment},
  author={Xue, Hongwei and Sun, Yuchong and Liu, Bei and Fu, Jianlong and Song, Ruihua and Li, Houqiang and Luo, Jiebo},
  booktitle={ICLR},
  year={2023}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipVipRetrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, dsl: bool = False) -> dict[str, float]:
        similarity = torch.from_numpy(np.asarray(predictions, dtype=np.float32))
        return similarity_metrics(similarity, torch.as_tensor(np.asarray(references), dtype=torch.long), dsl)
