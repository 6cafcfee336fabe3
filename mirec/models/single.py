"""Single-interest baselines: one vector per user, so the benefit of K interests is measured.

- `single`: the ComiRec-SA encoder with one attention head (K = 1), same positional embeddings.
- `mean`:   mean of the history embeddings followed by a residual linear layer.
- `youtubednn`: YouTube DNN (Covington et al., 2016) candidate tower: mean-pooled history embeddings
            through a ReLU MLP,  u = W2 ReLU(W1 mean(E x) + b1) + b2.
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


@register_model("youtubednn")
class YoutubeDNN(MultiInterestModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(_one(cfg))
        d = cfg.dim
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, d))

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(self.item_emb.weight.dtype)  # [B, L]
        a = m / m.sum(1, keepdim=True).clamp_min(1)  # [B, L]
        self.aux = a[:, None, :]  # [B, 1, L]
        h = torch.einsum("bl,bld->bd", a, self.item_emb(item_seq))  # [B, d]
        return self.mlp(h)[:, None, :]  # [B, 1, d]
