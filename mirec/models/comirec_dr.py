"""ComiRec-DR (Cen et al., 2020): capsule dynamic routing with one map per interest.

  ê_ji = W_j e_i          (W_j: d×d per interest)       [B, K, L, d]
  b_ji = 0
  repeat T = 3 times:
    w_ji = softmax_j(b_ji)              (over interests, padding -> 0)
    z_j  = Σ_i w_ji ê_ji ;  u_j = squash(z_j)           [B, K, d]
    b_ji += u_jᵀ ê_ji                   (on a stop-gradient copy of ê, as in the ComiRec code)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mirec.models.base import ModelConfig, MultiInterestModel, register_model, squash


@register_model("comirec_dr")
class ComiRecDR(MultiInterestModel):
    #: BaM's soft selection: with the hard argmax the capsules that rarely win get no gradient and DR trails
    #: every other model; sampling the trained interest from softmax(s) was better on 8 of 9 paired runs over
    #: ml-latest-small, synthetic and ml-100k (docs/models.md, "Interest selection: BaM's soft selection")
    default_selection = "sampled"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.W = nn.Parameter(torch.randn(cfg.K, cfg.dim, cfg.dim) * cfg.dim ** -0.5)  # [K, d, d]

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L = item_seq.shape
        m = mask[:, None, :].to(self.W.dtype)  # [B, 1, L]
        e = self.item_emb(item_seq)  # [B, L, d]
        e_hat = torch.einsum("kde,ble->bkld", self.W, e)  # [B, K, L, d]
        e_iter = e_hat.detach()
        b = torch.zeros(B, self.K, L, device=e.device, dtype=e_hat.dtype)  # [B, K, L]
        for it in range(self.cfg.routing_iters):
            w = torch.softmax(b, dim=1) * m  # [B, K, L]
            last = it == self.cfg.routing_iters - 1
            z = torch.einsum("bkl,bkld->bkd", w, e_hat if last else e_iter)  # [B, K, d]
            u = squash(z)
            if not last:
                b = b + torch.einsum("bkd,bkld->bkl", u, e_iter)
        self.aux = w
        return u
