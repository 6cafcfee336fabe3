"""SASRec (Kang & McAuley, 2018): causal self-attention over the sequence; the last position is the user.

  H⁰ = item_emb(x)·√d + P                                 [B, L, d]   (P: learned positions)
  Hˡ = Block(Hˡ⁻¹),  Block(h) = h' + FFN(LN(h')),  h' = h + MHA(LN(h), causal mask)   (pre-LN, l = 1..n_layers)
  u  = LN(Hᴸ)[last real position]                          [B, d]      -> interests [B, 1, d]
A single-interest sequential baseline (K = 1): multi-interest results mean something next to it.
The harness trains it like the others (one target per example, the history's last position predicts it).
self.aux = the last layer's attention of the last position over the sequence [B, 1, L] (evaluation).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mirec.models.base import ModelConfig, MultiInterestModel, pos_ids, register_model


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, causal, need_weights: bool):  # h [B, L, d]; causal [L, L] True = blocked
        x = self.ln1(h)
        # the weights are only read for collapse metrics at evaluation; without them attention takes the
        # fused kernel (several times faster in training)
        a, w = self.attn(x, x, x, attn_mask=causal, need_weights=need_weights)
        h = h + self.drop(a)
        return h + self.ffn(self.ln2(h)), w  # w [B, L, L] (averaged over heads)


@register_model("sasrec")
class SASRec(MultiInterestModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.model_copy(update={"K": 1}))
        d = cfg.dim
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        self.blocks = nn.ModuleList(_Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L = item_seq.shape
        h = self.drop(self.item_emb(item_seq) * self.cfg.dim ** 0.5 + self.pos_emb(pos_ids(mask)))  # [B, L, d]
        # causal: position i sees j ≤ i only, so with right padding no real position ever sees padding
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=h.device), 1)  # [L, L]
        w = None
        for blk in self.blocks:
            h, w = blk(h, causal, need_weights=not self.training)
        h = self.ln(h)  # [B, L, d]
        last = (mask.sum(1) - 1).clamp_min(0)  # [B] index of the last real item (right padding)
        rows = torch.arange(B, device=h.device)
        self.aux = (w[rows, last] * mask if w is not None else mask / mask.sum(1, keepdim=True).clamp_min(1)
                    ).to(h.dtype)[:, None, :]  # [B, 1, L]  (uniform stand-in in training)
        return h[rows, last][:, None, :]  # [B, 1, d]
