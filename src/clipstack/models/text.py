"""The text tower: a transformer over BPE token ids that returns one embedding per caption.

tokens [B,L] -> token_embedding + positional_embedding -> transformer (causal for CLIP, bidirectional
for SigLIP-style towers) -> ln_final -> pool (at the EOT token: argmax id) -> projection -> [B, embed_dim].

Keys match OpenCLIP's text tower (`token_embedding.weight`, `positional_embedding`, `transformer.*`,
`ln_final`, `text_projection`); `CLIP` decides whether they sit at the top level or under `text.`.
"""

from __future__ import annotations

import torch
from torch import nn

from clipstack.models.config import TextCfg
from clipstack.models.layers import LayerNorm, TowerOutput, Transformer


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextCfg, embed_dim: int, act_layer: type[nn.Module]):
        super().__init__()
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.causal = not cfg.no_causal_mask
        self.pool_type = cfg.pool_type
        self.pad_id = cfg.pad_id
        self.eos_id = cfg.eos_id
        self.output_dim = embed_dim
        width, eps = cfg.width, cfg.norm_kwargs.get("eps", 1e-5)

        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.transformer = Transformer(
            width, cfg.layers, cfg.heads, mlp_ratio=cfg.mlp_ratio, ls_init_value=cfg.ls_init_value,
            act_layer=act_layer, norm_eps=eps,
        )
        self.ln_final = LayerNorm(width, eps=eps)
        if cfg.proj_type == "none":
            self.text_projection = None
        elif cfg.proj_bias:
            self.text_projection = nn.Linear(width, embed_dim)
        else:
            self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenCLIP's (and OpenAI's) text init: small normal embeddings, depth-scaled residual outputs."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if isinstance(self.text_projection, nn.Linear):
            nn.init.normal_(self.text_projection.weight, std=width**-0.5)
            nn.init.zeros_(self.text_projection.bias)
        elif self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=width**-0.5)

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":  # CLIP BPE: EOT (49407) is the highest id in every row
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)

    def forward_features(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> TowerOutput:
        """Token features [B,L,width] after ln_final, the padding mask (True = real token) and the
        projected pooled embedding. Padding is not masked inside attention, as in OpenCLIP: the causal
        mask already hides it from the EOT token, and SigLIP towers were trained seeing it. An extra
        `attn_mask` ([B,L,L] bool, True = may attend; e.g. packed captions) is combined with causality."""
        seq_len = tokens.shape[1]
        if seq_len > self.context_length:
            raise ValueError(f"{seq_len} tokens per caption exceed the model's context length "
                             f"{self.context_length}; tokenize with get_tokenizer(model config)")
        x = self.token_embedding(tokens) + self.positional_embedding[:seq_len].to(self.token_embedding.weight.dtype)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)  # broadcast over heads
        x = self.transformer(x, attn_mask=attn_mask, is_causal=self.causal)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self._pool_index(tokens)]
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        elif self.text_projection is not None:
            pooled = pooled @ self.text_projection
        return TowerOutput(tokens=x, mask=tokens != self.pad_id, pooled=pooled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled embedding. With causal attention nothing after the pooled token (EOT) can reach
        it, so in eager mode the padding after the longest caption is cut off first: exact, and several
        times cheaper on real captions, which are much shorter than the context. Under `torch.compile`
        (or export) the full context is kept: the cut length is data (a host sync, a graph break, and a
        new shape per batch), and the same causality makes the result equal."""
        if self.causal and self.pool_type != "last" and not torch.compiler.is_compiling():
            tokens = tokens[:, : int(self._pool_index(tokens).max()) + 1]
        return self.forward_features(tokens).pooled

    def lock(self, unlocked_layers: int = 0) -> None:
        """Freeze the tower, leaving the last `unlocked_layers` blocks (and ln_final/projection when any
        block is unlocked) trainable."""
        for p in self.parameters():
            p.requires_grad = False
        if unlocked_layers <= 0:
            return
        groups: list[nn.Module | nn.Parameter | None] = [
            *self.transformer.resblocks[-unlocked_layers:], self.ln_final, self.text_projection]
        for group in groups:
            if group is None:
                continue
            for p in [group] if isinstance(group, nn.Parameter) else group.parameters():
                p.requires_grad = True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
