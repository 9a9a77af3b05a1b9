"""The dual encoder: a vision tower and a text tower embedded into one space, plus a learned temperature.

`CLIP(cfg)` builds both towers from a `ModelCfg`. Its state_dict has exactly OpenCLIP's keys: with the
plain CLIP layout the text tower's weights sit at the top level (`token_embedding.weight`,
`transformer.resblocks.0...`), with `custom_text` (OpenCLIP's CustomTextCLIP, used by SigLIP-style
configs) they sit under `text.`. In code the text tower is always `model.text`; two small state_dict
hooks translate the key names, so checkpoints move between clipstack and open_clip unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipstack.models.config import ModelCfg, is_resnet
from clipstack.models.layers import TowerOutput, act_layer_for
from clipstack.models.text import TextTransformer
from clipstack.models.vision import VisionTransformer

# Text tower attributes that OpenCLIP's plain CLIP keeps at the top level of its state_dict.
_FLAT_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class CLIP(nn.Module):
    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.cfg = cfg
        act_layer = act_layer_for(cfg.quick_gelu)
        if is_resnet(cfg.vision):
            from clipstack.models.resnet import ModifiedResNet

            self.visual: nn.Module = ModifiedResNet(cfg.vision, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, act_layer)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, act_layer)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))  # log-space temperature
        self.logit_bias = (
            nn.Parameter(torch.tensor(cfg.init_logit_bias)) if cfg.init_logit_bias is not None else None
        )
        self.preprocess_cfg: dict = {}  # set by the factory (mean, std, interpolation, resize_mode)
        if not cfg.custom_text:
            self.register_state_dict_post_hook(_flatten_text_keys)
            self.register_load_state_dict_pre_hook(_nest_text_keys)

    # -- attributes later stages read -------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def image_size(self) -> tuple[int, int]:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def model_config(self) -> dict:
        """The OpenCLIP-format config this model was built from (what `save_pretrained` writes)."""
        return self.cfg.raw

    # -- encoding ---------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def image_features(self, image: torch.Tensor) -> TowerOutput:
        return self.visual.forward_features(image)

    def text_features(self, tokens: torch.Tensor) -> TowerOutput:
        return self.text.forward_features(tokens)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> tuple:
        """(image_features, text_features, logit_scale.exp()[, logit_bias]), features L2-normalized;
        either input may be None, as in OpenCLIP."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image->text and text->image logits, scaled (and biased for SigLIP)."""
        image_features, text_features, scale, *bias = self(image, text)
        logits = scale * image_features @ text_features.T
        if bias:
            logits = logits + bias[0]
        return logits, logits.T

    # -- training helpers -------------------------------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze the image tower but its last `unlocked_groups` groups; a ResNet's frozen groups keep
        their BatchNorm statistics fixed too."""
        self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that are usually excluded from weight decay (embeddings and positions)."""
        if is_resnet(self.cfg.vision):
            return {"visual.attnpool.positional_embedding", "text.positional_embedding"}
        return {"visual.class_embedding", "visual.positional_embedding", "text.positional_embedding"}


def _flatten_text_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: `text.token_embedding.weight` -> `token_embedding.weight` (OpenCLIP CLIP)."""
    nested = prefix + "text."
    items = list(state_dict.items())
    state_dict.clear()  # rebuilt in the same order so the file layout reads naturally
    for key, value in items:
        state_dict[prefix + key[len(nested):] if key.startswith(nested) else key] = value


def _nest_text_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                    missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """load_state_dict pre-hook: the inverse of `_flatten_text_keys`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.startswith(_FLAT_TEXT_KEYS):
            state_dict[prefix + "text." + rest] = state_dict.pop(key)
