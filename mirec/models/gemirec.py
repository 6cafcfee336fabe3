"""GemiRec (Wu et al., 2025): interest quantisation (IDMM) + interest generation (MIPDM) + retrieval (MIRM).

IDMM — a residual-quantised interest dictionary E* = E¹ × … × Eᶜ, Eᶜ [M_c, d_q], d_q 16. Sizes: `codebook_sizes`
  "auto" (default) = the paper's shape scaled to the catalogue (`auto_codebook_sizes`: C = 4 levels, each half the
  one above, ΠM_c ≈ n_items / 32 joint codes, e.g. 8×4×2×2 = 128 for 3,871 items), or a list (the paper's
  32×16×8×4 = 16,384, which is exactly the rule at 524,288 items):
  r_1 = enc(sg[v_i])                      v_i = the item's vector in score space       [n, d_q]
  m_c = argmin_j ‖r_c − Eᶜ_j‖²,  r_{c+1} = r_c − sg[Eᶜ_{m_c}]
  z_quan(v) = concat(E¹_{m_1}, …, Eᶜ_{m_C})                                            [n, C·d_q]
  L_IDMM = ‖sg[v] − dec(z_quan)‖² + Σ_c (‖sg[r_c] − Eᶜ_{m_c}‖² + β ‖r_c − sg[Eᶜ_{m_c}]‖²),  β = 0.25
  (straight-through: the decoder's gradient reaches the encoder through r_c + sg[e_c − r_c]).
  Codebooks are k-means-initialised level by level on the catalogue's residuals when the first stage that
  uses codes begins; `dead_code_reset` re-seeds codes no item uses at each later epoch.
MIPDM — a GPT decoupled from the user tower (its own input projection of sg[item vectors], default 6 layers,
  4 heads, width 16) over the history; its last position gives logits over the ΠM_c joint codes:
  L_MIPDM = CE(FC(GPT(S_u))_last, m*),  m* = the code of the next (target) item (on `mipdm_batch` examples of
  each batch, default 64 of 256: the GPT is most of a step's cost on CPU).
MIRM — u = user tower (self-attentive pooling + MLP, ComiRec-SA's one-head encoder)                  [B, d]
  u_m = fusion(concat(e_m, u)) = u + MLP(concat(e_m, u)),  score(m, u, i) = cos(u_m, v_i)
  (`fusion_zero_init`: the MLP's last layer and its weights on e_m start at 0, so every u_m starts as u and, when
  the codes enter in the joint stage, as the tower the mirm stage trained: the codes can only add to it)
  (`prototype_weight` γ₀ > 0 adds γ‖u‖·sg[dec(e_m)]: the item vector the decoder reconstructs from the code, which
  turns each u_m toward its code's items; γ is learnt. Off by default, the paper's fusion)
  (`fusion: attention`: the code also steers the tower's pooling, u_m = Σ_l softmax_l(s_l + (W_q e_m)ᵀ(W_k h_l)/√r) h_l
  + MLP, s_l the tower's attention logits, W_q starting at 0; then the fusion MLP as above. "mlp" = the paper's)
  which codes m a training example is fused with (`mirm_codes`):
  "predicted" (default): the K codes it would be served with, M̂ = ε-rule top K of sg[MIPDM logits] [B, K];
      the positive and every item negative are scored by their best interest, max_{m ∈ M̂} s(m, u, i) (the
      `max` selection, MultiInterestModel.select + mirec.train.LossModule), as the merge ranks at serving;
  "target" (the paper): the target's own code m*, one interest [B, 1]. On a small catalogue m* names a
      handful of items: MIRM learns code -> item, while serving has only predicted codes.
  L_MIRM = −log e^{s⁺} / (e^{s⁺} + Σ_{i' ∈ batch/uniform negatives} e^{s(u, i')} + Σ_{m' ∈ hard ∪ easy} e^{s(m', u, i)})
  s⁺ = s(m*, u, i) ("target") or max_{m ∈ M̂} s(m, u, i) ("predicted"); negative interests m': hard = MIPDM's
  top codes, easy = uniformly random codes; m* and the served codes are never negatives (masked).
  The item negatives are the training loop's own (mirec.train.LossModule); the negative interests enter the
  same softmax through `training_terms()["extra_negatives"]`.
Total λ1 L_IDMM + λ2 L_MIPDM + λ3 L_MIRM (0.2, 1, 1), in the stages of `options.stages` (default
  mirm 3 epochs → idmm 2 epochs → joint until early stopping):
  mirm:  L_MIRM only, with no interest (e_m = 0: a single-interest two-tower model) — item vectors learn first,
         so the k-means dictionary is built on meaningful vectors;
  idmm:  k-means init, then L_IDMM + L_MIPDM (the retrieval loss is off: item vectors and tower stay put);
  joint: all three. Under DDP every loss is computed in every stage (weight 0 when off), so that every
         parameter is in every step's graph; on one process the mirm stage skips L_IDMM / L_MIPDM and the idmm
         stage MIRM's interests (e = 0 there, as in mirm), the work whose weight is 0.
Serving: the K (= cfg.K) most probable codes under MIPDM, at most ε (= 3) of them sharing a first-level code,
  give K interests u_{m_k}; each retrieves from the item index, the merge combines them. Codes are cached per
  history (`CodeCache`, cleared on every switch to training; `refresh()` empties it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from mirec.config import StrictModel
from mirec.models.base import ModelConfig, MultiInterestModel, masked_softmax, pos_ids, register_model
from mirec.models.sasrec import _Block

STAGES = ("mirm", "idmm", "joint")


class Stage(StrictModel):
    name: Literal["mirm", "idmm", "joint"]
    epochs: int | None = Field(None, ge=1)  # None = until training ends (only the last stage)


class GemiRecOptions(StrictModel):
    """`ModelConfig.options` of GemiRec (defaults: the paper's, except `codebook_sizes`, `mirm_codes`,
    `fusion_zero_init` and `mipdm_batch`; docs/models.md, "GemiRec")."""

    #: M_c of the C levels: a list (the paper's [32, 16, 8, 4]) or "auto" = `auto_codebook_sizes(n_items,
    #: auto_levels, auto_items_per_code)`, the paper's shape scaled to the catalogue
    codebook_sizes: list[int] | Literal["auto"] = "auto"
    auto_levels: int = Field(4, ge=1)  # C under "auto"
    auto_items_per_code: float = Field(32, gt=0)  # "auto": ΠM_c ≈ n_items / auto_items_per_code
    #: the codes a training example's interests are fused from: "predicted" = its K served codes (MIPDM's ε-rule
    #: top K, detached; the positive scored by its best interest), "target" = the target item's own code m*
    mirm_codes: Literal["predicted", "target"] = "predicted"
    #: the fusion MLP's last layer and its weights on e_m start at 0: u_m = u at the start, and when the codes
    #: enter (joint stage) every u_m is the tower trained so far, u + MLP(concat(0, u)): those weights only learn
    #: once e_m ≠ 0
    fusion_zero_init: bool = True
    #: γ₀ of the code-prototype term of the fusion, u_m = u + MLP(concat(e_m, u)) + γ‖u‖·sg[dec(e_m)]: dec(e_m) is
    #: what IDMM's decoder reconstructs from the code, the item vector the code stands for, so the term turns u
    #: toward the code's items; γ learns from γ₀. 0 = off (the paper's fusion)
    prototype_weight: float = Field(0.0, ge=0)
    #: what the code is fused with: "mlp" (the paper's) = the tower's one pooled u for every code; "attention" =
    #: the code also steers the tower's pooling, u_m = Σ_l softmax_l(s_l + q_mᵀk_l / √r) h_l with q_m = W_q e_m,
    #: k_l = W_k h_l (rank r = `attention_rank`; W_q starts at 0, so u_m starts as u): each code pools the history
    #: items that go with it, as ComiRec-SA's heads do, before the fusion MLP
    fusion: Literal["mlp", "attention"] = "mlp"
    attention_rank: int = Field(32, ge=1)
    code_dim: int = Field(16, ge=1)  # d_q
    beta: float = Field(0.25, ge=0)  # commitment
    lambda_idmm: float = Field(0.2, ge=0)
    lambda_mipdm: float = Field(1.0, ge=0)
    lambda_mirm: float = Field(1.0, ge=0)
    gpt_layers: int = Field(6, ge=1)
    gpt_heads: int = Field(4, ge=1)
    gpt_dim: int = Field(16, ge=1)
    hard_interests: int = Field(4, ge=0)  # negative interests from MIPDM's top codes
    #: examples of each training batch that the GPT learns from (its CE loss); None = all. Under mirm_codes
    #: "target" only they get hard negative interests (the others easy ones only); under "predicted" the others go
    #: through the GPT without gradient for their codes. A compute choice: the GPT is ~2/3 of a step at 6 layers
    #: over 50 positions on CPU; the architecture is unchanged.
    mipdm_batch: int | None = Field(64, ge=1)
    easy_interests: int = Field(16, ge=0)  # uniformly random negative codes
    epsilon: int = Field(3, ge=1)  # serving: at most ε of the K codes share a first-level code
    kmeans_init: bool = True
    kmeans_iters: int = Field(20, ge=1)
    dead_code_reset: bool = False
    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="mirm", epochs=3), Stage(name="idmm", epochs=2),
                                                         Stage(name="joint")], min_length=1)
    cache_size: int = Field(100_000, ge=0)  # per-history code cache entries (0 = off)


def auto_codebook_sizes(n_items: int, levels: int = 4, items_per_code: float = 32) -> list[int]:
    """The paper's dictionary shape scaled to the catalogue: each level half the size of the one above,
    M_c = max(2, round(M_1 / 2^(c−1))), with M_1 the one whose ΠM_c is nearest (in log) to
    max(n_items / items_per_code, 2^levels) joint codes (so that a code names ~items_per_code items, not one).
    The paper's 32×16×8×4 = 16,384 is this rule at 524,288 items; 3,871 items -> 8×4×2×2 = 128."""
    target = max(n_items / items_per_code, 2.0 ** levels)

    def shape(m1: int) -> list[int]:
        return [max(2, round(m1 / 2 ** c)) for c in range(levels)]

    best = min(range(2, int(target) + 3), key=lambda m1: (abs(math.log(math.prod(shape(m1)) / target)), m1))
    return shape(best)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding. x [n, q] -> centres [k, q]; an emptied centre is re-seeded on
    the point farthest from its centre; with n < k the extra centres are jittered copies of points."""
    g = torch.Generator().manual_seed(seed)
    x = x.float().cpu()
    n = len(x)
    if n <= k:
        extra = x[torch.randint(n, (k - n,), generator=g)] + 1e-3 * torch.randn(k - n, x.shape[1], generator=g)
        return torch.cat([x, extra])
    c = x[torch.randint(n, (1,), generator=g)]
    d2 = torch.cdist(x, c).pow(2).squeeze(1)  # [n]
    for _ in range(1, k):  # k-means++: the next centre drawn with p ∝ distance² to the nearest centre
        nxt = x[torch.multinomial(d2 + 1e-12, 1, generator=g)]
        c = torch.cat([c, nxt])
        d2 = torch.minimum(d2, (x - nxt).pow(2).sum(1))
    for _ in range(iters):
        dist = torch.cdist(x, c)  # [n, k]
        a = dist.argmin(1)
        cnt = torch.bincount(a, minlength=k)
        new = torch.zeros_like(c).index_add_(0, a, x) / cnt.clamp_min(1)[:, None]
        far = dist.gather(1, a[:, None]).squeeze(1).argsort(descending=True)  # farthest points first
        empty = (cnt == 0).nonzero().squeeze(1)
        new[empty] = x[far[: len(empty)]]
        c = new
    return c


def select_codes(logits: torch.Tensor, sizes: list[int], K: int, eps: int) -> torch.Tensor:
    """The K most probable joint codes with at most ε sharing a first-level code. logits [B, ΠM] -> [B, K].
    Greedy in probability order under a per-group cap picks exactly the top K of the union of every first-level
    group's own top ε, which is computed here without a loop."""
    B = len(logits)
    rest = int(np.prod(sizes[1:])) if len(sizes) > 1 else 1
    g = logits.float().view(B, sizes[0], rest)  # [B, M1, rest]
    e = min(eps, rest)
    top_v, top_i = g.topk(e, dim=-1)  # [B, M1, ε]
    flat_v = top_v.reshape(B, -1)  # [B, M1·ε]
    flat_i = (top_i + torch.arange(sizes[0], device=g.device)[:, None] * rest).reshape(B, -1)
    k = min(K, flat_v.shape[1])
    best = flat_v.topk(k, dim=-1).indices  # [B, K]
    return flat_i.gather(1, best)


class CodeCache:
    """Per-history cache of the served codes: key = the kept history (the last max_len items), value = [K] codes.
    A bounded LRU; the model empties it whenever it is switched to training (its codes may change)."""

    def __init__(self, size: int):
        self.size, self.store = size, OrderedDict()

    def get(self, key):
        if key in self.store:
            self.store.move_to_end(key)
            return self.store[key]
        return None

    def put(self, key, codes: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self.store[key] = codes
        self.store.move_to_end(key)
        while len(self.store) > self.size:
            self.store.popitem(last=False)

    def clear(self) -> None:
        self.store.clear()

    def __len__(self) -> int:
        return len(self.store)


@register_model("gemirec")
class GemiRec(MultiInterestModel):
    default_selection = "max"  # mirm_codes "predicted": each item scored by its best interest ("target": hard)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        o = self.opt = GemiRecOptions.model_validate(cfg.options)
        if o.mirm_codes == "target":  # one interest per example (the target's code): the selection is trivial
            self.default_selection = "hard"
        self.sizes = (auto_codebook_sizes(cfg.n_items, o.auto_levels, o.auto_items_per_code)
                      if o.codebook_sizes == "auto" else list(o.codebook_sizes))
        if o.codebook_sizes == "auto":  # the saved model_config.json names the sizes, whatever the rule becomes
            self.cfg = cfg.model_copy(update={"options": {**cfg.options, "codebook_sizes": self.sizes}})
        d, q, C = cfg.dim, o.code_dim, len(self.sizes)
        if cfg.K > self.sizes[0] * min(o.epsilon, int(np.prod(self.sizes[1:]))):
            raise ValueError(f"GemiRec: K = {cfg.K} codes cannot be served with at most ε = {o.epsilon} per "
                             f"first-level code out of {self.sizes[0]}")
        self.n_codes = int(np.prod(self.sizes))
        self.register_buffer("strides", torch.tensor([int(np.prod(self.sizes[c + 1:])) for c in range(C)]),
                             persistent=False)
        # user tower (MIRM): self-attentive pooling with positions + MLP head
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        self.W1 = nn.Linear(d, cfg.hidden_factor * d)
        self.W2 = nn.Linear(cfg.hidden_factor * d, 1, bias=False)
        self.user_mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        # IDMM: encoder, C codebooks, decoder
        self.enc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, q))
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(M, q) * q ** -0.5) for M in self.sizes)
        self.dec = nn.Sequential(nn.Linear(C * q, d), nn.ReLU(), nn.Linear(d, d))
        # MIPDM: a GPT of its own over sg[item vectors]
        h = o.gpt_dim
        self.gpt_in = nn.Linear(d, h)
        self.gpt_pos = nn.Embedding(cfg.max_len, h)
        nn.init.normal_(self.gpt_pos.weight, std=h ** -0.5)
        self.gpt_blocks = nn.ModuleList(_Block(h, o.gpt_heads, 0.0) for _ in range(o.gpt_layers))
        self.gpt_ln = nn.LayerNorm(h)
        self.gpt_head = nn.Linear(h, self.n_codes)
        # MIRM fusion
        self.fusion = nn.Sequential(nn.Linear(d + C * q, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        if o.fusion_zero_init:  # u_m = u at the start, and the codes enter with no effect:
            with torch.no_grad():
                self.fusion[0].weight[:, : C * q].zero_()  # weights on e: no gradient while e = 0 (mirm, idmm)
                self.fusion[-1].weight.zero_(), self.fusion[-1].bias.zero_()
        if o.prototype_weight > 0:
            self.prototype_gamma = nn.Parameter(torch.tensor(float(o.prototype_weight)))
        if o.fusion == "attention":
            self.attn_query = nn.Linear(C * q, o.attention_rank, bias=False)  # W_q: 0 at the start (u_m = u)
            self.attn_key = nn.Linear(d, o.attention_rank, bias=False)  # W_k
            nn.init.zeros_(self.attn_query.weight)
        self.register_buffer("stage_id", torch.tensor(0))  # index into STAGES; saved with the weights
        self.register_buffer("dict_ready", torch.tensor(False))  # codebooks initialised (k-means)
        self.cache = CodeCache(o.cache_size)
        self.codes: torch.Tensor | None = None  # the last served codes [B, K]
        self._terms: dict = {}

    # ---- stages ----------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        return STAGES[int(self.stage_id)]

    def stage_at(self, epoch: int) -> str:
        start = 0
        for s in self.opt.stages:
            if s.epochs is None or epoch < start + s.epochs:
                return s.name
            start += s.epochs
        return self.opt.stages[-1].name

    def begin_epoch(self, epoch: int) -> str:
        name = self.stage_at(epoch)
        self.stage_id.fill_(STAGES.index(name))
        if name != "mirm":
            if not bool(self.dict_ready):
                self.init_dictionary()
            elif self.opt.dead_code_reset:
                self.reset_dead_codes()
        return name

    @property
    def use_codes(self) -> bool:
        return self.stage != "mirm"

    def train(self, mode: bool = True):
        self.cache.clear()  # codes computed by older weights must not be served
        return super().train(mode)

    def refresh(self) -> None:
        """Empty the code cache (the pipeline's refresh after new weights or histories)."""
        self.cache.clear()

    # ---- IDMM ------------------------------------------------------------------------------------
    def quantise(self, r1: torch.Tensor):
        """r1 [n, q] -> codes [n, C] long, residuals r_c [n, C, q], chosen entries e_c [n, C, q]."""
        r, codes, res, es = r1, [], [], []
        for E in self.codebooks:
            m = torch.cdist(r.float(), E.float()).argmin(-1)  # [n]
            e = E[m]  # [n, q]
            codes.append(m), res.append(r), es.append(e)
            r = r - e.detach()
        return torch.stack(codes, 1), torch.stack(res, 1), torch.stack(es, 1)

    def idmm_loss(self, v: torch.Tensor):
        """v [n, d] (already sg) -> (L_IDMM scalar, codes [n, C])."""
        codes, r, e = self.quantise(self.enc(v))
        e_st = r + (e - r).detach()  # straight-through: forward = e, gradient -> r (the encoder)
        v_hat = self.dec(e_st.flatten(1))  # [n, d]
        rec = (v - v_hat).pow(2).sum(-1).mean()
        emb = (r.detach() - e).pow(2).sum(-1).sum(-1).mean()
        commit = self.opt.beta * (r - e.detach()).pow(2).sum(-1).sum(-1).mean()
        return rec + emb + commit, codes

    def flat(self, codes: torch.Tensor) -> torch.Tensor:  # [.., C] -> [..] joint code index
        return (codes * self.strides).sum(-1)

    def unflat(self, m: torch.Tensor) -> torch.Tensor:  # [..] -> [.., C]
        return torch.stack([(m // s) % M for s, M in zip(self.strides.tolist(), self.sizes)], -1)

    def interest_emb(self, m: torch.Tensor) -> torch.Tensor:
        """joint codes [..] -> z_quan = concat_c Eᶜ[m_c]  [.., C·q]"""
        c = self.unflat(m)
        return torch.cat([E[c[..., i]] for i, E in enumerate(self.codebooks)], -1)

    def catalogue_vectors(self) -> torch.Tensor:
        return self.to_score_space(self.item_emb.weight[1:].detach().float())  # [N, d]

    @torch.no_grad()
    def item_codes(self) -> torch.Tensor:
        """[N, C] the code of every catalogue item (row = item_idx)."""
        v = self.catalogue_vectors()
        return torch.cat([self.quantise(self.enc(v[s: s + 8192]))[0] for s in range(0, len(v), 8192)])

    @torch.no_grad()
    def code_usage(self) -> list[float]:
        """Share of each level's codes that at least one catalogue item maps to."""
        c = self.item_codes()
        return [float(torch.unique(c[:, i]).numel() / M) for i, M in enumerate(self.sizes)]

    @torch.no_grad()
    def evaluation_metrics(self, item_category: np.ndarray | None = None) -> dict:
        """Measures mirec.evaluate adds for this model: code usage per level (share of each level's codes some
        item maps to), and with item categories the NMI of each level's codes against them."""
        from mirec.metrics import nmi

        codes = self.item_codes().cpu().numpy()  # [N, C]
        out = {f"code_usage_l{c + 1}": float(len(np.unique(codes[:, c])) / M) for c, M in enumerate(self.sizes)}
        out["code_usage_joint"] = float(len(np.unique(codes @ self.strides.cpu().numpy())) / self.n_codes)
        if item_category is not None:
            out.update({f"code_nmi_l{c + 1}": nmi(codes[:, c], item_category) for c in range(len(self.sizes))})
        return out

    @torch.no_grad()
    def init_dictionary(self, max_points: int = 50_000) -> None:
        """k-means on the residuals, level by level (random init stays when kmeans_init is off)."""
        if self.opt.kmeans_init:
            v = self.catalogue_vectors()
            if len(v) > max_points:
                v = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:max_points]]
            r = self.enc(v.to(self.item_emb.weight.device)).float()
            for c, E in enumerate(self.codebooks):
                cen = kmeans(r, len(E), self.opt.kmeans_iters, seed=c).to(E.device)
                E.copy_(cen.to(E.dtype))
                r = r - cen[torch.cdist(r, cen).argmin(-1)]
        self.dict_ready.fill_(True)

    @torch.no_grad()
    def reset_dead_codes(self) -> None:
        """Codes no item maps to are re-seeded on random items' residuals at that level."""
        v = self.catalogue_vectors().to(self.item_emb.weight.device)
        codes, r, _ = self.quantise(self.enc(v))
        g = torch.Generator().manual_seed(int(self.stage_id) * 7919 + len(v))
        for c, E in enumerate(self.codebooks):
            dead = torch.ones(len(E), dtype=torch.bool, device=E.device)
            dead[codes[:, c]] = False
            if dead.any():
                pick = torch.randint(len(v), (int(dead.sum()),), generator=g).to(E.device)
                E[dead] = r[pick, c].to(E.dtype)

    # ---- MIPDM -----------------------------------------------------------------------------------
    def code_logits(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """GPT over the history -> logits over the joint codes at the last real position. [B, ΠM]"""
        B, L = item_seq.shape
        x = self.gpt_in(self.to_score_space(self.item_emb(item_seq)).detach()) + self.gpt_pos(pos_ids(mask))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), 1)  # right padding: no real
        for blk in self.gpt_blocks:                                                     # position sees a pad
            x, _ = blk(x, causal, need_weights=False)
        last = (mask.sum(1) - 1).clamp_min(0)
        return self.gpt_head(self.gpt_ln(x)[torch.arange(B, device=x.device), last])

    # ---- MIRM ------------------------------------------------------------------------------------
    def user_vector(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        H = self.item_emb(item_seq)  # [B, L, d]
        logits = self.W2(torch.tanh(self.W1(H + self.pos_emb(pos_ids(mask))))).squeeze(-1)  # [B, L]
        self._tower = (H, logits, mask)  # for code_user_vectors: the pooling per code reuses them
        a = masked_softmax(logits, mask, dim=-1)  # [B, L]
        self._attn = a
        u = torch.einsum("bl,bld->bd", a, H)
        return u + self.user_mlp(u)  # [B, d]

    def code_user_vectors(self, u: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower's vector per code and the attention it pooled with: u [B, d], e [B, M, C·q] -> ([B, M, d],
        [B, M, L]). Fusion "mlp": u and the tower's one attention for every code; "attention": the history pooled
        with the code's query (call user_vector first: it leaves H and the logits here)."""
        M = e.shape[1]
        if self.opt.fusion == "mlp":
            return u[:, None, :].expand(-1, M, -1), self._attn[:, None, :].expand(-1, M, -1)
        H, logits, mask = self._tower
        k = self.attn_key(H)  # [B, L, r]
        qm = self.attn_query(e)  # [B, M, r]
        scores = logits[:, None, :] + torch.einsum("bmr,blr->bml", qm, k) / math.sqrt(k.shape[-1])  # [B, M, L]
        a = masked_softmax(scores, mask[:, None, :], dim=-1)  # [B, M, L]
        u_m = torch.einsum("bml,bld->bmd", a, H)
        return u_m + self.user_mlp(u_m), a  # [B, M, d], [B, M, L]

    def fuse(self, e: torch.Tensor, u: torch.Tensor, codes: bool = True) -> torch.Tensor:
        """u_m = u + MLP(concat(e_m, u)) [+ γ‖u‖·sg[dec(e_m)]]; e [.., C·q], u broadcast to e's leading shape
        -> [.., d] (a residual on the tower: with `fusion_zero_init` the codes start with no effect). codes=False:
        e is the placeholder 0 of the stages without codes, which has no prototype."""
        u = u.expand(*e.shape[:-1], u.shape[-1])
        u_m = u + self.fusion(torch.cat([e, u], -1))
        if self.opt.prototype_weight > 0:  # in every call, so that γ is in every step's graph (DDP)
            with torch.no_grad():  # a fixed function of the dictionary here: IDMM alone trains the decoder
                proto = self.dec(e) if codes else torch.zeros_like(u)  # [.., d] the code's item vector
            u_m = u_m + self.prototype_gamma * u.norm(dim=-1, keepdim=True) * proto
        return u_m

    def serving_codes(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, K] the codes each user is served with (ε rule), through the per-history cache in eval mode."""
        if self.training or self.cache.size <= 0:
            return select_codes(self.code_logits(item_seq, mask), self.sizes, self.K, self.opt.epsilon)
        keys = [tuple(s[m].tolist()) for s, m in zip(item_seq.cpu(), mask.cpu())]
        got = [self.cache.get(k) for k in keys]
        miss = [i for i, c in enumerate(got) if c is None]
        if miss:
            new = select_codes(self.code_logits(item_seq[miss], mask[miss]), self.sizes, self.K, self.opt.epsilon)
            for j, i in enumerate(miss):
                got[i] = new[j]
                self.cache.put(keys[i], new[j])
        return torch.stack(got).to(item_seq.device)

    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, K, d]
        u = self.user_vector(item_seq, mask)  # [B, d]
        B, q = len(u), self.opt.code_dim * len(self.sizes)
        if self.use_codes:
            self.codes = self.serving_codes(item_seq, mask)  # [B, K]
            e = self.interest_emb(self.codes).to(u.dtype)  # [B, K, C·q]
        else:  # stage mirm: no dictionary yet, K copies of the single interest
            self.codes = None
            e = u.new_zeros(B, self.K, q)
        u_m, self.aux = self.code_user_vectors(u, e)  # [B, K, d]; aux [B, K, L]: what each interest pooled with
        return self.fuse(e, u_m, codes=self.use_codes)

    # ---- training --------------------------------------------------------------------------------
    def forward(self, item_seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                scale: float | torch.Tensor = 1.0):
        """-> (the positive's user vector [B, d], the example's interests [B, K', d]), both in score space:
        K' = K predicted-code interests ("predicted", in the stages that use codes), else 1 (u_{m*}, or u in mirm).
        The other terms via training_terms()."""
        o, st = self.opt, self.stage
        predicted = o.mirm_codes == "predicted"
        u = self.user_vector(item_seq, mask)  # [B, d]
        v_t = self.to_score_space(self.item_emb(target))  # [B, d] (MIRM's positive, with gradient)
        B, q = len(u), o.code_dim * len(self.sizes)
        ddp = dist.is_available() and dist.is_initialized()
        # the interests of MIRM: from codes in idmm (weight 0, skipped on one process) and joint
        fused = self.use_codes and (st == "joint" or ddp)
        if st == "mirm" and not ddp:
            l_idmm = l_mipdm = u.new_zeros((), dtype=torch.float32)  # weight 0 in this stage: skip the work
        else:  # under DDP every parameter must be in every step's graph: computed with weight 0
            l_idmm, codes_t = self.idmm_loss(v_t.detach().float())
            m_star = self.flat(codes_t)  # [B]
            sub = (torch.randperm(B, device=u.device)[: o.mipdm_batch] if o.mipdm_batch and B > o.mipdm_batch
                   else torch.arange(B, device=u.device))  # the examples the GPT learns from this step
            logits = self.code_logits(item_seq[sub], mask[sub])  # [B', ΠM]
            l_mipdm = F.cross_entropy(logits.float(), m_star[sub])
            if predicted and fused and len(sub) < B:  # every example needs its codes: the rest without gradient
                rest = torch.ones(B, dtype=torch.bool, device=u.device)
                rest[sub] = False
                full = logits.detach().new_empty(B, self.n_codes)  # [B, ΠM]
                full[sub] = logits.detach()
                with torch.no_grad():
                    full[rest] = self.code_logits(item_seq[rest], mask[rest]).to(full.dtype)
                logits, sub = full, torch.arange(B, device=u.device)  # row b of logits = example b
        if not fused:  # stage mirm (no dictionary yet) or idmm: one interest with e = 0 (u + MLP(0, u))
            self.codes = None
            e = u.new_zeros(B, 1, q)  # [B, 1, C·q]
        else:
            # the codes each example's interests are fused from [B, K'], with the served ε rule ("predicted")
            self.codes = (select_codes(logits.detach(), self.sizes, self.K, o.epsilon) if predicted
                          else m_star[:, None])
            e = self.interest_emb(self.codes).to(u.dtype)  # [B, K', C·q]
        u_m, aux = self.code_user_vectors(u, e)  # [B, K', d], [B, K', L]
        interests = self.to_score_space(self.fuse(e, u_m, codes=fused))  # [B, K', d]
        user = self.select(interests, v_t, scale)  # [B, d] the positive's (best) interest
        extra = None
        if fused and o.hard_interests + o.easy_interests > 0:
            taken = torch.cat([self.codes, m_star[:, None]], 1) if predicted else m_star[:, None]  # never negatives
            n_hard = min(o.hard_interests + taken.shape[1], self.n_codes)  # + the taken codes among them (masked)
            hard = m_star[:, None].repeat(1, n_hard)  # rows the GPT did not see: masked like m* itself
            hard[sub] = logits.detach().topk(n_hard, -1).indices
            easy = torch.randint(self.n_codes, (B, o.easy_interests), device=u.device)
            neg = torch.cat([hard, easy], 1)  # [B, M']
            e_neg = self.interest_emb(neg).to(u.dtype)  # [B, M', C·q]
            u_neg = self.to_score_space(self.fuse(e_neg, self.code_user_vectors(u, e_neg)[0]))  # [B, M', d]
            extra = torch.einsum("bmd,bd->bm", u_neg, v_t).masked_fill(
                (neg[:, :, None] == taken[:, None, :]).any(-1), float("-inf"))  # [B, M']
        self.aux = aux  # [B, K', L]
        lam_i = o.lambda_idmm * (st != "mirm")
        lam_p = o.lambda_mipdm * (st != "mirm")
        self._terms = {"retrieval_weight": o.lambda_mirm * (st != "idmm"), "extra_negatives": extra,
                       "losses": {"idmm": lam_i * l_idmm, "mipdm": lam_p * l_mipdm}}
        self.last_losses = {"idmm": l_idmm.detach(), "mipdm": l_mipdm.detach()}
        return user, interests

    def training_terms(self) -> dict:
        return self._terms
