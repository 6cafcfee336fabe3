"""HMISR / DIAM: hierarchical multi-interest extraction with mild constraints, an adaptive number of interests
K_u ≤ K and a learned per-user diversity preference d_u (../shared/seeds 002 HMISR, 001 DIAM; docs/models.md).

  X = item_emb(x) + P                                       [B, L, d]   (P: learned positions)
  H = X + MHA(LN X) ;  H = H + FFN(LN H)                    [B, L, d]   one bidirectional pre-LN block, pads masked
Level 1, coarse interests (K unit basis vectors b_k, shared by all users):
  α_ik = softmax_k((W_a h_i)ᵀ b_k / √d)                     [B, L, K]   soft assignment, 0 on padding
  m_k  = Σ_i α_ik / n                                       [B, K]      share of the history in interest k
  c_k  = Σ_i α_ik h_i / Σ_i α_ik                            [B, K, d]   (same direction as the seed's Σ_i α_ik h_i)
Level 2, fine interests (per coarse interest, attention restricted to its items by the bias log α_ik):
  s_k  = Σ_i softmax_i((W_q c_k)ᵀ W_k h_i / √d + log α_ik) h_i                  stable interest (cross-attention)
  r_k  = c_k − s_k                                                              residual = dynamic part
  t_k  = Σ_i softmax_i((W_r r_k)ᵀ W_k h_i / √d + log α_ik + ρ (i − n + 1)/n) h_i intent: recency-biased, ρ ≥ 0
  v_k  = c_k + MLP([s_k ; t_k])        (no level 2: v_k = c_k + MLP(c_k))
Diversity preference (DIAM module 3; the seed's L_diversity_pref):
  x_u  = [category entropy, category switch rate, long-tail share, H(m)/log K, Rao spread of c under m]
  d_u  = σ(MLP_d(x_u)) ∈ [0, 1],  trained by MSE to y_u = ½(entropy + switch rate) of the history
Adaptive K_u (the seeds' activation rule as the gate's prior, a learned correction on top):
  K̄_u  = 1 + (K − 1) d_u                                   how many interests the user's diversity affords
  g_k  = σ(γ (K̄_u − rank_k − ½) + MLP_g([log(K m_k), d_u, log(1+n)/log(1+max_len)]))   [B, K]
         rank_k = rank of m_k in the user's shares (0 = largest); MLP_g starts at 0, so K_u starts at round(K̄_u)
  z_k  = 1[g_k ≥ ½] or k = argmax g   (straight-through: z + g − sg(g)),   K_u = Σ_k z_k ≥ 1
Served interests (what the index is searched with; same in training, so training scores what serving ranks):
  interests sorted by (z, g) descending, inactive slots repeat slot 0:  v'_k = z_k v̂_k + (1 − z_k) v̂_0
  — duplicates retrieve the same items with the same scores, which the candidate pool collapses onto slot 0,
  so the merge / MMR see exactly K_u interests. aux (α over the sequence) is 0 for inactive slots.
Auxiliary losses (MultiInterestModel.training_terms, each weighted by its HMISROptions λ):
  basis      ‖B̂B̂ᵀ − I‖²_F                                     mild (0.02) orthogonality of the basis
  entropy    Σ_k p_k log p_k, p_k = batch share of assignments   −H: the population uses every basis; a single
                                                                 user may still concentrate on one
  margin     mean over active pairs i<j of ReLU(cos(c_i, c_j) − m)   soft orthogonality with a margin
  recon      mean_i ‖ĥ_i − Σ_k α_ik ĉ_k‖²                       coarse interests reconstruct the history
  consistency  −log softmax_j((W_a v_k)ᵀ b_j/√d)[k] over active k  a fine interest stays in its coarse basket
  sparsity   mean_u (Σ_k z_k − K̄_u)², K̄_u = 1 + (K − 1) d_u     diversity-aware sparsity: a focused user (d_u ≈ 0)
                                                                 pays for every interest beyond one, a broad one may
                                                                 keep up to K (the seeds' activation rules, HMISR
                                                                 ⌈K(0.3 + 0.7 d_u)⌉ / DIAM ⌊σ(·)K_max⌋ + 1, as a
                                                                 soft prior; the gate chooses which interests)
  d_u        mean_u (d_u − y_u)²
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from mirec.config import StrictModel
from mirec.metrics import long_tail_mask
from mirec.models.base import ModelConfig, MultiInterestModel, masked_softmax, pos_ids, register_model

EPS = 1e-9


class HMISROptions(StrictModel):
    """`ModelConfig.options` of `hmisr` (unknown keys are errors). Defaults: the seeds' mild settings."""

    level2: bool = True  # False = ablation "no level 2": v_k = c_k + MLP(c_k)
    adaptive_k: bool = True  # False = ablation "fixed K": every interest active, no sparsity cost
    lambda_basis: float = Field(0.02, ge=0)  # ‖B̂B̂ᵀ − I‖²_F  (seed: 0.01–0.05)
    lambda_entropy: float = Field(0.01, ge=0)  # − batch entropy of the assignments (seed: 0.01)
    lambda_margin: float = Field(0.1, ge=0)  # margin orthogonality of the coarse interests (DIAM: 0.1)
    margin: float = Field(0.3, ge=-1, le=1)  # m: only cos(c_i, c_j) > m is penalised (DIAM: 0.3); 0 = strong
    lambda_recon: float = Field(0.1, ge=0)  # coarse reconstruction of the history
    lambda_consistency: float = Field(0.1, ge=0)  # coarse <-> fine consistency (seed: 0.1)
    #: (Σ_k z_k − K̄_u)², K̄_u = 1 + (K − 1)·d_u, on the straight-through hard count. Measured on synthetic (one run
    #: each): a plain λ·(1 − d_u)·Σ_k g_k (0.05) switched every user down to one interest (the retrieval loss alone
    #: does not hold a second one on); the same prior on the soft count Σ g left every gate near ½ (Spearman of K_u
    #: with the planted number 0.28); with the gate prior and λ = 0.1 the retrieval signal kept a second interest
    #: on for every user (K_u ∈ {2, 3}, Spearman 0.44 at epoch 4; the soft count's 0.78)
    lambda_sparsity: float = Field(1.0, ge=0)
    lambda_du: float = Field(0.1, ge=0)  # MSE of d_u against the history label
    gate_threshold: float = Field(0.5, gt=0, lt=1)
    #: γ of the prior γ(K̄_u − rank − ½) in the gate logit; 0 = the learned MLP alone (which then starts with every
    #: interest on, logit 2). Without the prior (measured on synthetic, 4–8 epochs, one run each) the gate did not
    #: separate users: Spearman(K_u, planted number of interests) 0.26 at epoch 4
    gate_prior: float = Field(4.0, ge=0)


class _Block(nn.Module):
    """Pre-LN bidirectional self-attention block; padded keys masked (real positions never see padding)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x [B, L, d], mask [B, L]
        y = self.ln1(x)
        a, _ = self.attn(y, y, y, key_padding_mask=~mask, need_weights=False)
        x = x + a
        return x + self.ffn(self.ln2(x))


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


# ---- the loss terms, as plain functions (tests check each against a hand computation) -----------------------
def basis_orthogonality(B: torch.Tensor) -> torch.Tensor:
    """‖B̂B̂ᵀ − I‖²_F of the unit basis rows. B [K, d]."""
    Bn = F.normalize(B, dim=-1)
    G = Bn @ Bn.T
    return ((G - torch.eye(len(B), device=B.device, dtype=B.dtype)) ** 2).sum()


def assignment_neg_entropy(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k log p_k with p_k = share of all real positions of the batch assigned to k. alpha [B, L, K]."""
    p = (alpha * mask[..., None]).sum((0, 1))  # [K]
    p = p / p.sum().clamp_min(EPS)
    return (p * torch.log(p.clamp_min(EPS))).sum()


def margin_orthogonality(c: torch.Tensor, active: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over users of the mean over active pairs i<j of ReLU(cos(c_i, c_j) − m). c [B, K, d], active [B, K]."""
    cn = F.normalize(c, dim=-1)
    cos = cn @ cn.transpose(1, 2)  # [B, K, K]
    K = c.shape[1]
    upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=c.device), 1)
    w = (active[:, :, None] * active[:, None, :]).to(c.dtype) * upper  # [B, K, K] active pairs i<j
    pen = (F.relu(cos - margin) * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)  # [B]
    return pen.mean()


def reconstruction(h: torch.Tensor, alpha: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over real positions of ‖ĥ_i − Σ_k α_ik ĉ_k‖² (unit vectors). h [B, L, d], alpha [B, L, K], c [B, K, d]."""
    rec = torch.einsum("blk,bkd->bld", alpha, F.normalize(c, dim=-1))
    err = ((F.normalize(h, dim=-1) - rec) ** 2).sum(-1)  # [B, L]
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def consistency(fine_logits: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Mean over active (u, k) of −log softmax_j(fine_logits[u, k, j])[k]. fine_logits [B, K, K], active [B, K]."""
    K = fine_logits.shape[1]
    logp = torch.log_softmax(fine_logits, dim=-1)
    own = logp[:, torch.arange(K), torch.arange(K)]  # [B, K]
    w = active.to(own.dtype)
    return -(own * w).sum() / w.sum().clamp_min(1.0)


def history_diversity_features(cats: torch.Tensor, mask: torch.Tensor, n_cat: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(category entropy H(p_c)/log(max(2, min(n, C))), switch rate) per user; 0 where n < 2 (as
    mirec.retrieval.diversity, which says NaN there). cats [B, L] (any value on padding), mask [B, L]."""
    B, L = cats.shape
    m = mask.to(torch.float32)
    n = m.sum(1)  # [B]
    counts = torch.zeros(B, n_cat, device=cats.device).scatter_add_(1, cats.clamp(0, n_cat - 1), m)  # [B, C]
    p = counts / n.clamp_min(1)[:, None]
    ent = -(p * torch.log(p.clamp_min(EPS))).sum(1)
    denom = torch.log(torch.clamp(torch.minimum(n, torch.full_like(n, float(n_cat))), min=2.0))
    ent = torch.where(n >= 2, (ent / denom).clamp(max=1.0), torch.zeros_like(ent))
    pair = m[:, 1:]  # pair (i-1, i) is real iff position i is (right padding)
    sw = ((cats[:, 1:] != cats[:, :-1]).float() * pair).sum(1) / pair.sum(1).clamp_min(1)
    sw = torch.where(n >= 2, sw, torch.zeros_like(sw))
    return ent, sw


def rao_spread(c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} w_i w_j (1 − cos(c_i, c_j)) / (1 − 1/K), clipped to [0, 1] (as diversity.interest_spread)."""
    K = c.shape[1]
    cn = F.normalize(c, dim=-1)
    dis = 1 - cn @ cn.transpose(1, 2)  # [B, K, K]
    dis = dis * (1 - torch.eye(K, device=c.device, dtype=c.dtype))
    q = torch.einsum("bi,bij,bj->b", w, dis, w) / (1 - 1 / K) if K > 1 else torch.zeros(len(c), device=c.device)
    return q.clamp(0, 1)


@register_model("hmisr")
class HMISR(MultiInterestModel):
    default_selection = "max"  # the loss scores every candidate by its best interest, as the merge ranks

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.opt = HMISROptions.model_validate(cfg.options or {})
        d, K = cfg.dim, cfg.K
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        self.block = _Block(d, cfg.n_heads, cfg.dropout)
        self.basis = nn.Parameter(torch.linalg.qr(torch.randn(d, K))[0].T.contiguous() if K <= d
                                  else torch.randn(K, d))  # [K, d], orthonormal rows at init
        self.W_a = nn.Linear(d, d, bias=False)  # assignment key
        self.W_q, self.W_k, self.W_r = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.rho = nn.Parameter(torch.tensor(0.0))  # recency strength of the intent, softplus(ρ) ≥ 0
        self.fine = _mlp(2 * d if self.opt.level2 else d, 2 * d, d)
        self.du_net = _mlp(5, 16, 1)
        self.gate = _mlp(3, 16, 1)
        with torch.no_grad():  # the correction starts at 0 (K_u = round(K̄_u)); without a prior: every gate on
            self.gate[2].weight.zero_()
            self.gate[2].bias.fill_(0.0 if self.opt.gate_prior > 0 else 2.0)
        # catalogue metadata for the diversity features, filled by attach_data (saved with the weights)
        self.register_buffer("item_cat", torch.zeros(cfg.n_items + 1, dtype=torch.long))  # row 0 = padding
        self.register_buffer("item_tail", torch.zeros(cfg.n_items + 1))  # 1 = long-tail item
        self.register_buffer("n_cat", torch.tensor(0))
        self.user_diversity: torch.Tensor | None = None  # [B] d_u of the last forward (read by the Recommender)
        self.k_active: torch.Tensor | None = None  # [B] K_u of the last forward
        self.gates: torch.Tensor | None = None  # [B, K] g in the served order
        self.du_features: torch.Tensor | None = None  # [B, 5] x_u of the last forward (explains d_u)
        self.du_label: torch.Tensor | None = None  # [B] y_u of the last forward
        self._terms: dict = {}

    # ---- data hook -----------------------------------------------------------------------------------------
    def attach_data(self, dataset) -> None:
        """Item categories and the long-tail flag (outside the items holding 80% of the interactions, as
        mirec.metrics.long_tail_mask) from the training Dataset."""
        cat = np.asarray(dataset.item_category, np.int64)
        tail = long_tail_mask(np.asarray(dataset.item_popularity, np.float64)).astype(np.float32)
        with torch.no_grad():
            self.item_cat[1:] = torch.from_numpy(cat).to(self.item_cat.device)
            self.item_tail[1:] = torch.from_numpy(tail).to(self.item_tail.device)
            self.n_cat.fill_(int(cat.max()) + 1 if len(cat) else 0)

    # ---- forward -------------------------------------------------------------------------------------------
    def interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        o, cfg = self.opt, self.cfg
        B, L = item_seq.shape
        K, d = self.K, cfg.dim
        m = mask.to(self.basis.dtype)  # [B, L]
        n = m.sum(1).clamp_min(1)  # [B]
        H = self.block(self.item_emb(item_seq) + self.pos_emb(pos_ids(mask)), mask)  # [B, L, d]

        # level 1: soft assignment to the basis
        Bn = F.normalize(self.basis, dim=-1)  # [K, d]
        alpha = torch.softmax(self.W_a(H) @ Bn.T / math.sqrt(d), dim=-1) * m[..., None]  # [B, L, K]
        mass = alpha.sum(1)  # [B, K]
        share = mass / n[:, None]  # m_k
        c = torch.einsum("blk,bld->bkd", alpha, H) / mass.clamp_min(EPS)[..., None]  # [B, K, d]

        # level 2: stable interest + recency-biased intent over the items of each coarse interest
        if o.level2:
            key = self.W_k(H)  # [B, L, d]
            bias = torch.log(alpha.transpose(1, 2) + EPS)  # [B, K, L]
            valid = mask[:, None, :]
            a_s = masked_softmax(self.W_q(c) @ key.transpose(1, 2) / math.sqrt(d) + bias, valid, -1)  # [B, K, L]
            s = a_s @ H  # [B, K, d]
            r = c - s
            rec = (pos_ids(mask).to(H.dtype) - (n[:, None] - 1)) / n[:, None]  # [B, L] ≤ 0, 0 = the last item
            a_t = masked_softmax(self.W_r(r) @ key.transpose(1, 2) / math.sqrt(d) + bias
                                 + F.softplus(self.rho) * rec[:, None, :], valid, -1)
            t = a_t @ H  # [B, K, d]
            v = c + self.fine(torch.cat([s, t], -1))  # [B, K, d]
        else:
            v = c + self.fine(c)

        # diversity preference d_u
        if int(self.n_cat) >= 2:
            cats, C = self.item_cat[item_seq], int(self.n_cat)
        else:  # no categories: the coarse baskets stand in
            cats, C = alpha.argmax(-1), K
        ent, sw = history_diversity_features(cats, mask, C)
        tail = (self.item_tail[item_seq] * m).sum(1) / n
        a_ent = -(share * torch.log(share.clamp_min(EPS))).sum(1) / math.log(K) if K > 1 else torch.zeros_like(n)
        x_u = torch.stack([ent, sw, tail, a_ent, rao_spread(c, share)], -1)  # [B, 5]
        d_u = torch.sigmoid(self.du_net(x_u)).squeeze(-1)  # [B]

        # adaptive K_u: gates on the share, d_u and the length
        if o.adaptive_k and K > 1:
            f = torch.stack([torch.log(K * share + 1e-6), d_u.detach()[:, None].expand(-1, K),
                             (torch.log1p(n) / math.log1p(cfg.max_len))[:, None].expand(-1, K)], -1)  # [B, K, 3]
            k_bar = 1 + (K - 1) * d_u.detach()  # [B] how many interests the user's diversity affords
            rank = torch.argsort(torch.argsort(share.detach(), dim=1, descending=True, stable=True), dim=1)  # [B, K]
            prior = o.gate_prior * (k_bar[:, None] - rank.to(H.dtype) - 0.5)
            g = torch.sigmoid(prior + self.gate(f).squeeze(-1))  # [B, K]
            hard = (g >= o.gate_threshold)
            hard[torch.arange(B, device=g.device), g.argmax(1)] = True  # K_u ≥ 1
            z = hard.to(g.dtype) + g - g.detach()  # straight-through
        else:
            g = torch.ones(B, K, device=H.device, dtype=H.dtype)
            hard = torch.ones(B, K, dtype=torch.bool, device=H.device)
            z = g

        # served order: active first, by gate; inactive slots repeat slot 0
        order = torch.argsort(hard.to(g.dtype) * 2 + g.detach(), dim=1, descending=True, stable=True)  # [B, K]
        take = lambda x: torch.gather(x, 1, order.view(B, K, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
        vs, zs, hs = take(self.to_score_space(v)), take(z), take(hard)
        out = zs[..., None] * vs + (1 - zs[..., None]) * vs[:, :1]  # [B, K, d]
        self.aux = take(alpha.transpose(1, 2)) * hs[..., None]  # [B, K, L]
        self.user_diversity, self.k_active, self.gates = d_u.detach(), hard.sum(1).detach(), take(g).detach()
        self.du_features, self.du_label = x_u.detach(), (0.5 * (ent + sw)).detach()  # [B, 5], [B]

        if self.training:
            y = self.du_label  # the history's diversity label
            act = hard.detach()
            fine_logits = self.W_a(v) @ Bn.T / math.sqrt(d)  # [B, K, K]
            terms = {"basis": o.lambda_basis * basis_orthogonality(self.basis),
                     "entropy": o.lambda_entropy * assignment_neg_entropy(alpha, mask),
                     "margin": o.lambda_margin * margin_orthogonality(c, act, o.margin),
                     "recon": o.lambda_recon * reconstruction(H, alpha, c, mask),
                     "consistency": o.lambda_consistency * consistency(fine_logits, act),
                     "d_u": o.lambda_du * ((d_u - y) ** 2).mean()}
            if o.adaptive_k and K > 1:
                terms["sparsity"] = o.lambda_sparsity * ((z.sum(1) - k_bar) ** 2).mean()  # the hard count (ST)
            self._terms = terms
        else:
            self._terms = {}
        return out

    def serving_interests(self, item_seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.interests(item_seq, mask)  # already in score space, in the served order

    def training_terms(self) -> dict:
        return {"losses": self._terms} if self._terms else {}
