"""Single-interest baselines: one vector per user, so the benefit of K interests is measured.

- `single`: the ComiRec-SA encoder with one attention head (K = 1), same positional embeddings.
- `mean`:   YouTube-DNN style mean of the history embeddings followed by a linear layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mirec.models.base import ModelConfig, MultiInterestModel, register_model
from mirec.models.comirec_sa import ComiRecSA


def _one(cfg: ModelConfig) -> ModelConfig:
    return cfg.model_copy(update={"K": 1})


@register_model("single")
class SingleSA(ComiRecSA):
    def __init__(self, cfg: ModelConfig):
        super().__init__(_one(cfg))


@register_model("mean")
class MeanPool(MultiInterestModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(_one(cfg))
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(self.proj.weight.dtype)  # [B, L]
        a = m / m.sum(1, keepdim=True).clamp_min(1)  # [B, L]   uniform weights over real items
        self.aux = a[:, None, :]  # [B, 1, L]
        h = torch.einsum("bl,bld->bd", a, self.item_emb(item_seq))  # [B, d]
        return (h + self.proj(h))[:, None, :]  # [B, 1, d]
