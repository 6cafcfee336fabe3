"""Shared pieces of every multi-interest model: config, registry, base class, label-aware selection.

Conventions (docs/CONTRACTS.md):
  item_emb: nn.Embedding[n_items + 1, d]; row 0 = padding, row item_idx + 1 = item item_idx.
  interests(item_seq[B, L] (shifted ids, 0 = pad), mask[B, L] bool) -> [B, K, d]
  self.aux: the last routing / attention weights [B, K, L] (0 on padding), for collapse metrics + REMI.
Sequences are RIGHT-padded: real items sit at positions 0..len-1 (oldest first), so positional
embeddings and the per-position routing noise of an item do not depend on the pad length.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from mirec.config import StrictModel


class ModelConfig(StrictModel):
    """Architecture of one model. `n_items` is filled in from the dataset by `mirec.train`."""

    name: str = "mind"
    n_items: int = Field(0, ge=0)
    dim: int = Field(64, ge=2)
    K: int = Field(4, ge=1)  # number of interests
    max_len: int = Field(50, ge=1)  # the last max_len items of a history are used
    routing_iters: int = Field(3, ge=1)  # MIND / ComiRec-DR
    routing_sigma: float = Field(1.0, ge=0)  # MIND: std of the random initial routing logits
    pow_p: float = Field(2.0, gt=0)  # label-aware attention power (selection = "label_aware")
    #: target-aware interest selection during training: hard argmax (ComiRec), label-aware attention
    #: (MIND), or "sampled": an interest drawn from softmax(scores) (BaM's soft selection, so interests
    #: that rarely win the argmax still get gradient), or "max": every candidate item (positive and
    #: negatives) is scored by its best interest, max_k s_k(item) — the score the merge at retrieval ranks
    #: by, so training and serving agree; None = the model's own default.
    selection: Literal["hard", "label_aware", "sampled", "max"] | None = None
    #: how a user vector u scores an item v: "cos" = cos(u, v) (/τ in the training loss; item vectors and
    #: interests are L2-normalised for retrieval), "dot" = u·v (the original papers' inner product).
    similarity: Literal["cos", "dot"] = "cos"
    hidden_factor: int = Field(4, ge=1)  # ComiRec-SA attention MLP width = hidden_factor * dim
    #: ComiRec-SA: attention logits are divided by attn_temperature (> 1 spreads the attention and counters
    #: its collapse onto single items)
    attn_temperature: float = Field(1.0, gt=0)
    #: a shared 2-layer ReLU MLP applied to every extracted interest, v_k <- v_k + W2 ReLU(W1 v_k)
    #: (YouTube DNN's tower on top of each interest); "none" = the paper's interests as extracted;
    #: None = the model's own default (mlp for ComiRec-SA and its one-head twin `single`, whose interests are
    #: otherwise convex combinations of raw history embeddings and retrieve the history itself, and for MIND,
    #: measured better on ml-latest-small and not worse on synthetic; none for ComiRec-DR)
    interest_head: Literal["none", "mlp"] | None = None
    n_layers: int = Field(2, ge=1)  # SASRec
    n_heads: int = Field(1, ge=1)  # SASRec
    dropout: float = Field(0.0, ge=0, lt=1)  # SASRec / YoutubeDNN (0 = off)
    #: settings only one model reads, validated by that model's own options class (e.g. GemiRec's dictionary
    #: sizes and stage schedule, `mirec.models.gemirec.GemiRecOptions`); {} = the model's defaults
    options: dict = Field(default_factory=dict)


_REGISTRY: dict[str, type["MultiInterestModel"]] = {}


def register_model(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build(cfg: ModelConfig) -> "MultiInterestModel":
    if cfg.name not in _REGISTRY:
        from mirec.errors import UnknownNameError

        raise UnknownNameError(f"unknown model {cfg.name!r}; known: {', '.join(available_models())}")
    if cfg.n_items <= 0:
        raise ValueError("ModelConfig.n_items must be set (number of items in the dataset)")
    return _REGISTRY[cfg.name](cfg)


def squash(z: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """u = ||z||^2 / (1 + ||z||^2) * z / ||z||"""
    n2 = (z * z).sum(dim, keepdim=True)
    return n2 / (1 + n2) * z / torch.sqrt(n2 + eps)


class MultiInterestModel(nn.Module):
    registry_name = "?"
    default_selection = "hard"
    default_interest_head = "none"
    is_neural = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.K = cfg.K
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.aux: torch.Tensor | None = None
        d = cfg.dim
        self.head = (nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
                     if (cfg.interest_head or self.default_interest_head) == "mlp" else None)

    @property
    def selection(self) -> str:
        return self.cfg.selection or self.default_selection

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, K, d]
        raise NotImplementedError

    def select(self, interests: torch.Tensor, target_emb: torch.Tensor, scale: float | torch.Tensor = 1.0
               ) -> torch.Tensor:
        """Target-aware selection of one user vector per example (training). Scores s_k = scale·V_k·e_t are
        in the loss's logit units (scale = 1/τ for cosine), so every rule sees the same sharpness.
        interests [B, K, d], target_emb [B, d] -> [B, d]
          hard:        v = V[argmax_k s_k]                                 (ComiRec)
          label_aware: v = V^T softmax(pow(s, p))                          (MIND; sign-preserving pow)
          sampled:     v = V[k],  k ~ softmax(s)                           (BaM soft selection)
          max:         as hard for the positive; the loss scores each negative with its own best interest
        """
        s = scale * torch.einsum("bkd,bd->bk", interests, target_emb)  # [B, K]
        rows = torch.arange(len(s), device=s.device)
        if self.selection in ("hard", "max"):  # "max" scores the negatives with max_k too (LossModule)
            return interests[rows, s.argmax(-1)]
        if self.selection == "sampled":
            k = torch.multinomial(torch.softmax(s.detach().float(), -1), 1).squeeze(1)  # [B]
            return interests[rows, k]
        a = torch.softmax(torch.sign(s) * s.abs().pow(self.cfg.pow_p), dim=-1)  # [B, K]
        return torch.einsum("bk,bkd->bd", a, interests)

    def to_score_space(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors as they are compared: unit length under cosine similarity, unchanged under dot."""
        return F.normalize(x, dim=-1) if self.cfg.similarity == "cos" else x

    def serving_interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """interests() through the optional interest head, in score space: what the item index is searched
        with. [B, K, d]"""
        v = self.interests(item_seq, mask)
        if self.head is not None:
            v = v + self.head(v)
        return self.to_score_space(v)

    # ---- training hooks (mirec.train calls these; the defaults change nothing) ----------------------------
    def begin_epoch(self, epoch: int) -> str | None:
        """Called before every training epoch (0-based). A staged model switches its stage here and returns
        the stage's name; when the name changes, early stopping starts over (the kept checkpoint comes from
        the latest stage). None = no stages."""
        return None

    def training_terms(self) -> dict:
        """After a training forward: model-specific terms of the loss, read by mirec.train.LossModule.
        {"retrieval_weight": w (× the sampled-softmax loss, default 1), "extra_negatives": [B, M] scores
        (score space, like u·v) of further negatives of each example's positive, added as columns of the same
        softmax, "losses": {name: weighted scalar loss added to the total}}. {} = nothing extra."""
        return {}

    def attach_data(self, dataset) -> None:
        """Called once by mirec.train before training with the training `Dataset`: a model that needs catalogue
        metadata (HMISR: item categories and the long-tail flag, kept in buffers so they travel with the
        weights) reads it here. Default: nothing."""
        return None

    def forward(self, item_seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                scale: float | torch.Tensor = 1.0):
        """item_seq/mask [B, L], target [B] shifted ids -> (user vector [B, d], interests [B, K, d]),
        both in score space."""
        v = self.serving_interests(item_seq, mask)
        return self.select(v, self.to_score_space(self.item_emb(target)), scale), v

    @torch.no_grad()
    def item_vectors(self):
        """[n_items, d] float32 numpy in score space: index row i = item_idx i (= embedding row i + 1)."""
        return self.to_score_space(self.item_emb.weight[1:].detach().float()).cpu().numpy()


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax over `dim` with masked-out entries = 0 (rows with no valid entry give all zeros)."""
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.softmax(x, dim=dim)
    return torch.nan_to_num(out, nan=0.0)


def pos_ids(mask: torch.Tensor) -> torch.Tensor:
    """Right padding: position of each element from the start of the sequence. [B, L] long."""
    return torch.arange(mask.shape[1], device=mask.device).expand_as(mask)


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x, dim=dim)


def pad_histories(histories, max_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """list of item_idx arrays -> (item_seq [B, L] shifted ids (item_idx + 1), mask [B, L]); RIGHT padded,
    the last `max_len` items kept, L = the longest kept history in the batch (at least 1)."""
    kept = [torch.as_tensor(h[-max_len:] if len(h) else h, dtype=torch.long) for h in histories]
    L = max(1, max((len(h) for h in kept), default=1))
    seq = torch.zeros(len(kept), L, dtype=torch.long)
    for i, h in enumerate(kept):
        seq[i, : len(h)] = h + 1
    mask = seq > 0
    if device is not None:
        seq, mask = seq.to(device), mask.to(device)
    return seq, mask
