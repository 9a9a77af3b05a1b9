"""Zero-shot retrieval between an image set and its captions (several captions per image).

Scores are `texts_emb @ images_emb.T` as in CLIP_benchmark: `image_retrieval_recall@k` is text -> image,
`text_retrieval_recall@k` image -> text (a hit when any of the image's captions is in the top k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clipstack.evaluate import metrics as M


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    t2i_ranks: torch.Tensor  # first-positive rank per caption
    i2t_ranks: torch.Tensor  # first-positive rank per image
    scores: torch.Tensor  # [n_texts, n_images]
    texts_image_index: list[int]


def run_retrieval(texts_emb: torch.Tensor, images_emb: torch.Tensor, texts_image_index: Sequence[int],
                  recall_k: Sequence[int] = (1, 5, 10)) -> RetrievalResult:
    scores = texts_emb.float() @ images_emb.float().T
    pos = M.positive_pairs(texts_image_index, images_emb.shape[0])
    t2i, i2t = M.first_positive_rank(scores, pos), M.first_positive_rank(scores.T, pos.T)
    return RetrievalResult(M.retrieval_metrics_from_ranks(t2i, i2t, recall_k), t2i, i2t, scores,
                           list(texts_image_index))
