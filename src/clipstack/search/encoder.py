"""Turn query texts and images into normalized embeddings with a clipstack model, loaded once.

Used by `clipstack embed` (batches of shard samples) and by the server (batches of concurrent queries).
Inference runs under `torch.inference_mode` in float32 on CPU: exact, and fast everywhere (bf16 is
faster only on CPUs with native bf16 such as AVX512-BF16/AMX, and 100x slower on those without), with
the linear layers packed for oneDNN (`models.inference`).
"""

from __future__ import annotations

import os
from typing import Any


class Encoder:
    """A model plus its tokenizer and eval-time image transform."""

    def __init__(self, model_name: str | os.PathLike, device: str = "cpu", pretrained: str | None = None):
        from clipstack import models

        self.name = str(model_name)
        self.device = device
        self.model, self.preprocess = models.create_model_from_pretrained(self.name, pretrained=pretrained,
                                                                          device=device)
        if device == "cpu":
            models.pack_for_inference(self.model)  # oneDNN linears: ~2x encode on CPUs MKL is slow on
        self.model.eval()
        self.tokenizer = models.get_tokenizer(self.name)
        self.dim = int(self.model.embed_dim)

    def encode_texts(self, texts: list[str]) -> Any:
        """float32 [N, dim], L2-normalized."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()

    def encode_images(self, images: list[Any]) -> Any:
        """float32 [N, dim], L2-normalized, from PIL images (preprocessed here) or tensors [3,H,W]."""
        import torch

        with torch.inference_mode():
            batch = torch.stack([img if isinstance(img, torch.Tensor) else self.preprocess(img)
                                 for img in images]).to(self.device)
            return self.model.encode_image(batch, normalize=True).float().cpu().numpy()

