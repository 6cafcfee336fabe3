"""Training: target-aware interest selection + sampled softmax, REMI options, DDP-ready.

    from mirec.train import train, load_model, TrainConfig
    res = train("artifacts/data/synthetic", ModelConfig(name="mind"), TrainConfig(epochs=5), "artifacts/models/mind")
    model, cfg = load_model(res.checkpoint)

Examples: every position t ≥ 1 of every training sequence is one (history = the previous max_len items,
target = item t) example. Batches are length-bucketed (sorted inside shuffled chunks) and padded only
to the longest history in the batch.

Loss (per example b, user vector v_b = target-aware selection of its interests):
  logits = [v_b·e_pos | v_b·e_neg ...] (accidental hits masked), cross-entropy on the positive.
  negatives: `uniform` (num_negatives shared per batch), `in_batch` (the other examples' targets) or
  `mixed` (both). log-Q: each logit of item j gets −log c_j, c_j = expected times j is drawn
  (uniform: num_negatives/N; in-batch: B·p_j, p_j = j's share of training targets).
REMI:
  routing regularisation  L_RR = λ Σ_b ‖diag(C_b)‖²,  C_b = (A_b − Ā_b)(A_b − Ā_b)ᵀ / d, A_b [K, L] the
    attention/routing weights over the real positions (the REMI code's form: the variance of each
    interest's weights over the sequence);
  interest-aware hard negatives: per example, num_negatives items drawn with p(j) ∝ exp(β max_k z_k·v_j)
    (over the whole catalogue, or a uniform pool of hard_neg_pool items for large ones); they replace the
    uniform negatives.
Runs unchanged under `torchrun` (DistributedDataParallel; gloo on CPU, nccl on GPU); bf16 autocast on
GPU (`amp="bf16"` forces it on CPU too, the CPU-testable twin).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from mirec.config import StrictModel
from mirec.data import Dataset
from mirec.models import ModelConfig, MultiInterestModel, build
from mirec.checkpoint import load_model, save_checkpoint  # noqa: F401  (re-exported)

MODEL_FILE, MODEL_CONFIG, TRAIN_CONFIG, LAST_FILE = "model.pt", "model_config.json", "train_config.json", "last.pt"
LOG_FILE, CURVE_FILE = "metrics.jsonl", "training_curve.png"


class TrainConfig(StrictModel):
    """How a model is trained. Defaults measured in benchmarks/quality.py (docs/models.md, "Defaults")."""

    #: an epoch is one full pass over the training examples (samples_per_epoch caps it); `epochs` is the
    #: most epochs, early stopping on validation Recall@50 (`patience` evaluations without a better one)
    #: usually ends sooner, and `max_time_s` bounds the wall time; the best checkpoint is the one kept.
    epochs: int = Field(100, ge=1)
    patience: int = Field(5, ge=1)
    max_time_s: float | None = Field(None, gt=0)
    samples_per_epoch: int | None = Field(None, ge=1)  # examples drawn per epoch (None = all of them)
    #: "positions": every (sequence, position) example once per epoch; "users": as many examples drawn
    #: with every user equally likely (ComiRec's sampler)
    sampling: Literal["positions", "users"] = "positions"
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0)  # L2 (adam) or decoupled (adamw)
    schedule: Literal["constant", "cosine", "step"] = "constant"  # lr after warm-up
    warmup_steps: int = Field(0, ge=0)  # linear warm-up
    step_decay: float = Field(0.5, gt=0, le=1)  # "step": lr × step_decay every step_epochs epochs
    step_epochs: int = Field(10, ge=1)
    #: logit = cos(u, v)/temperature for models with similarity "cos" (ignored for "dot"). 0.2 by measurement
    #: (benchmarks/quality.py, every model, ml-latest-small and synthetic, 3 runs each): better than 0.1 in 30 of 36
    #: paired runs; worse on average only for ComiRec-DR on ml-latest-small (-0.013) and, within noise, MIND and
    #: YoutubeDNN there. The two tuning studies found 0.14 and 0.24. docs/models.md, "Temperature".
    temperature: float = Field(0.2, gt=0)
    learn_temperature: bool = False  # τ becomes a trained parameter, starting at `temperature`
    negatives: Literal["uniform", "in_batch", "mixed"] = "mixed"
    num_negatives: int = Field(1024, ge=1)  # uniform (or hard) negatives per batch / example
    logq: bool = False
    #: the example's own history items as extra negatives (accidental hits masked). Meant for data without
    #: re-consumption (movies: the future never repeats the past); "auto" = on when under 1% of training
    #: targets repeat an item of their history window (`Examples.repeat_rate`). Off by default: no gain
    #: measured on ml-latest-small (docs/models.md).
    history_negatives: Literal["auto", "on", "off"] = "off"
    remi_rr_weight: float = Field(0.0, ge=0)  # 0 = routing regularisation off
    remi_hard_neg_beta: float = Field(0.0, ge=0)  # 0 = interest-aware hard negatives off
    hard_neg_pool: int = Field(20000, ge=1)
    grad_clip: float | None = Field(5.0, gt=0)
    #: sparse gradients for the item-embedding table, updated by SparseAdam (lazy Adam: only the rows a batch
    #: touched move). A dense Adam step rewrites the whole table: ComiRec-SA trains 16.8x faster sparse at 10^6
    #: items, 1.34x at 10^5, 0.81x at 10^4 (benchmarks/results/train_speed_sparse.json). "auto" = on from
    #: SPARSE_AUTO_ITEMS catalogue items in a single process without interest-aware hard negatives (which read
    #: the whole table); weight decay then applies to the dense parameters only. Below that size (every quality
    #: benchmark) training is unchanged.
    sparse_item_embeddings: Literal["auto", "on", "off"] = "auto"
    eval_every: int = Field(1, ge=1)  # epochs
    eval_max_users: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 on CUDA, off on CPU
    num_threads: int | None = Field(None, ge=1)


@dataclass
class TrainResult:
    checkpoint: Path
    metrics: dict = field(default_factory=dict)
    model: MultiInterestModel | None = None  # the final (last-step) model of this process


# ---- checkpoints ---------------------------------------------------------------------------------
# save_checkpoint / load_model live in mirec.checkpoint (below retrieval and evaluation, which read
# checkpoints too); re-exported here.


CALIBRATION_FILE = "d_u_calibration.json"


def write_diversity_calibration(checkpoint_dir: str | Path, ds: Dataset, target_mean: float = 0.2,
                                alpha: float = 3.0) -> Path:
    """Fit the per-user diversity score d_u (mirec.retrieval.diversity) on the train users through the
    trained model and save it beside the checkpoint, so that the personalised aggregator served from
    this checkpoint is calibrated (mean d_u = target_mean; defaults from benchmarks/tradeoff.py)."""
    from mirec.retrieval.diversity import fit_calibration_for, save_calibration
    from mirec.retrieval.recommender import Recommender

    model, _ = load_model(checkpoint_dir)
    rec = Recommender(model, items=ds.items, item_popularity=ds.item_popularity)
    path = Path(checkpoint_dir) / CALIBRATION_FILE
    save_calibration(fit_calibration_for(rec, ds, target_mean=target_mean, alpha=alpha), path)
    return path



# ---- data ----------------------------------------------------------------------------------------
class Examples:
    """All (sequence, t) pairs with t ≥ 1: history = seq[max(0, t - max_len):t], target = seq[t]."""

    def __init__(self, sequences: dict[int, np.ndarray], max_len: int):
        self.seqs = [np.asarray(s, np.int64) for s in sequences.values() if len(s) >= 2]
        self.max_len = max_len
        sid = [np.full(len(s) - 1, i) for i, s in enumerate(self.seqs)]
        pos = [np.arange(1, len(s)) for s in self.seqs]
        self.sid = np.concatenate(sid) if sid else np.empty(0, np.int64)
        self.pos = np.concatenate(pos) if pos else np.empty(0, np.int64)
        self.length = np.minimum(self.pos, max_len)
        self.target_freq = np.bincount(np.concatenate([s[1:] for s in self.seqs]) if self.seqs else [0])

    def __len__(self) -> int:
        return len(self.sid)

    def repeat_rate(self, sample: int = 20000, seed: int = 0) -> float:
        """Share of examples whose target already occurs in its history window (on a sample)."""
        if not len(self):
            return 0.0
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self), size=min(sample, len(self)), replace=False)
        hits = 0
        for i in idx:
            s, t = self.seqs[self.sid[i]], self.pos[i]
            hits += bool(np.any(s[max(0, t - self.max_len): t] == s[t]))
        return hits / len(idx)

    def batches(self, batch_size: int, rng: np.random.Generator, limit: int | None = None,
                per_user: bool = False) -> list[np.ndarray]:
        """Length-bucketed shuffled batches: shuffle, sort by length inside chunks of 50 batches,
        cut into batches, shuffle the batch order. per_user: the epoch's examples are drawn with
        replacement so that every user is equally likely (a user's positions share 1/n_users), instead of
        every position once (which lets the longest sequences dominate)."""
        n = limit or len(self)
        if per_user:
            w = 1.0 / np.bincount(self.sid)[self.sid]
            idx = rng.choice(len(self), size=n, p=w / w.sum())
        else:
            idx = rng.permutation(len(self))[:n]
        chunk = batch_size * 50
        out = []
        for s in range(0, len(idx), chunk):
            c = idx[s: s + chunk]
            c = c[np.argsort(self.length[c], kind="stable")]
            out += [c[i: i + batch_size] for i in range(0, len(c), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def collate(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> item_seq [B, L] (shifted, right-padded), mask [B, L], target [B] (shifted)."""
        L = int(self.length[ids].max())
        seq = torch.zeros(len(ids), L, dtype=torch.long)
        tgt = torch.empty(len(ids), dtype=torch.long)
        for b, i in enumerate(ids):
            s, t = self.seqs[self.sid[i]], self.pos[i]
            h = s[max(0, t - self.max_len): t]
            seq[b, : len(h)] = torch.from_numpy(h + 1)
            tgt[b] = int(s[t]) + 1
        return seq, seq > 0, tgt


# ---- losses --------------------------------------------------------------------------------------
def routing_regularization(aux: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """REMI L_RR: Σ_b ‖diag(C_b)‖², C_b = (A − Ā)(A − Ā)ᵀ / d over the real positions. aux [B, K, L]."""
    m = mask[:, None, :].to(aux.dtype)  # [B, 1, L]
    n = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (aux * m).sum(-1, keepdim=True) / n  # [B, K, 1]
    c = (aux - mean) * m  # [B, K, L]
    diag = (c * c).sum(-1) / dim  # [B, K]  = diag((A-Ā)(A-Ā)ᵀ)/d
    return (diag ** 2).sum()


def hard_negatives(interests: torch.Tensor, item_table: torch.Tensor, count: int, beta: float, pool: int,
                   gen: torch.Generator | None = None) -> torch.Tensor:
    """Interest-aware hard negatives: per example, `count` shifted ids drawn with
    p(j) ∝ exp(β · max_k z_k·v_j) over the catalogue (or a uniform pool of `pool` items). -> [B, count]"""
    with torch.no_grad():
        n = item_table.shape[0] - 1
        dev = interests.device
        cand = (torch.randperm(n, generator=gen)[:pool].to(dev) + 1) if pool < n else torch.arange(1, n + 1, device=dev)
        s = torch.einsum("bkd,nd->bkn", interests.float(), item_table[cand].float()).amax(1)  # [B, P]
        draw = torch.multinomial(torch.softmax(beta * s, -1), count, replacement=True, generator=None)
        return cand[draw]


class LossModule(nn.Module):
    """Wraps the model so that the whole loss is one forward pass (what DDP wraps).

    logits: cos(u, v)/τ (model similarity "cos"; τ fixed or learned) or u·v ("dot"). The positive's
    logit against shared uniform and/or in-batch negatives, accidental hits masked, optional log-Q."""

    def __init__(self, model: MultiInterestModel, cfg: TrainConfig, target_freq: np.ndarray,
                 history_negatives: bool = False):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.history_negatives = history_negatives
        n = model.cfg.n_items
        p = np.zeros(n + 1)
        p[1: len(target_freq) + 1] = target_freq[:n]
        self.register_buffer("p_target", torch.tensor(p / max(p.sum(), 1), dtype=torch.float32), persistent=False)
        self.cosine = model.cfg.similarity == "cos"
        log_inv_tau = torch.tensor(float(-np.log(cfg.temperature)))
        if self.cosine and cfg.learn_temperature:
            self.log_inv_tau = nn.Parameter(log_inv_tau)
        else:
            self.register_buffer("log_inv_tau", log_inv_tau, persistent=False)

    @property
    def scale(self) -> torch.Tensor | float:
        """1/τ for cosine logits (clamped to τ ≥ 0.01 when learned), 1 for inner products."""
        return self.log_inv_tau.clamp(max=float(np.log(100))).exp() if self.cosine else 1.0

    @property
    def temperature(self) -> float:
        return float(1 / self.scale.detach()) if self.cosine else 1.0

    def forward(self, seq, mask, tgt, uni_neg):
        cfg, m = self.cfg, self.model
        scale = self.scale
        user, interests = m(seq, mask, tgt, scale)  # [B, d], [B, K, d] (unit length under cosine)

        def E(ids):  # item vectors in score space
            return m.to_score_space(m.item_emb(ids))

        max_over_interests = m.selection == "max"

        def shared(vecs):  # [N, d] columns shared by the batch -> [B, N]
            if max_over_interests:  # each item scored by its best interest, as the merge ranks at retrieval
                return torch.einsum("bkd,nd->bkn", interests, vecs).amax(1)
            return user @ vecs.T

        def own(vecs):  # [B, N, d] columns of each example -> [B, N]
            if max_over_interests:
                return torch.einsum("bkd,bnd->bkn", interests, vecs).amax(1)
            return torch.einsum("bd,bnd->bn", user, vecs)

        pos = (user * E(tgt)).sum(-1, keepdim=True)  # [B, 1]  (the selected interest = the best one)
        cols, ids = [pos], [tgt[:, None]]
        hard = cfg.remi_hard_neg_beta > 0
        if hard:
            table = m.to_score_space(m.item_emb.weight)
            beta = cfg.remi_hard_neg_beta * float(scale.detach() if torch.is_tensor(scale) else scale)  # logit units
            neg = hard_negatives(interests, table, cfg.num_negatives, beta, cfg.hard_neg_pool)
            cols.append(own(E(neg)))  # [B, M]
            ids.append(neg)
        elif cfg.negatives in ("uniform", "mixed"):
            cols.append(shared(E(uni_neg)))  # [B, M]
            ids.append(uni_neg[None, :].expand(len(tgt), -1))
        if cfg.negatives in ("in_batch", "mixed"):
            cols.append(shared(E(tgt)))  # [B, B]
            ib = tgt[None, :].expand(len(tgt), -1).clone()
            ib[torch.eye(len(tgt), dtype=torch.bool, device=tgt.device)] = -1  # the positive itself
            ids.append(ib)
        n_sampled = sum(c.shape[1] for c in cols)
        if self.history_negatives:
            cols.append(own(E(seq)))  # [B, L]  the example's own history
            ids.append(seq.masked_fill(~mask, -1))  # padding masked like an accidental hit
        terms = m.training_terms()  # model-specific loss terms (MultiInterestModel.training_terms)
        if terms.get("extra_negatives") is not None:  # more negatives of the positive (GemiRec: negative interests)
            cols.append(terms["extra_negatives"])  # [B, M'] score space; id 0 = never a hit, no log-Q
            ids.append(torch.zeros(terms["extra_negatives"].shape, dtype=torch.long, device=tgt.device))
        logits = torch.cat(cols, 1).float() * scale  # [B, 1 + ...]
        ids = torch.cat(ids, 1)
        if cfg.logq:
            N, B = m.cfg.n_items, len(tgt)
            c = torch.zeros_like(logits[:, :n_sampled])  # history negatives are not sampled: no correction
            if cfg.negatives in ("uniform", "mixed") and not hard:
                c += cfg.num_negatives / N
            if cfg.negatives in ("in_batch", "mixed"):
                c += B * self.p_target[ids[:, :n_sampled].clamp_min(0)]
            logits[:, :n_sampled] = logits[:, :n_sampled] - torch.log(c.clamp_min(1e-12)) * (c > 0)
        hit = ids[:, 1:] == tgt[:, None]  # accidental hits and the positive's own in-batch column
        hit |= ids[:, 1:] < 0
        logits[:, 1:] = logits[:, 1:].masked_fill(hit, float("-inf"))
        ce = F.cross_entropy(logits, torch.zeros(len(tgt), dtype=torch.long, device=logits.device))
        rr = torch.zeros((), device=logits.device)
        if cfg.remi_rr_weight > 0 and m.aux is not None:
            rr = cfg.remi_rr_weight * routing_regularization(m.aux.float(), mask, m.cfg.dim)
        rr = rr + sum(terms.get("losses", {}).values(), torch.zeros((), device=logits.device))
        return terms.get("retrieval_weight", 1.0) * ce + rr, ce.detach(), rr.detach()


SPARSE_AUTO_ITEMS = 100_000  # catalogue size from which "auto" turns sparse item embeddings on


def use_sparse_item_embeddings(cfg: TrainConfig, n_items: int, world: int) -> bool:
    """TrainConfig.sparse_item_embeddings resolved for this run (ValueError where "on" cannot work)."""
    if cfg.sparse_item_embeddings == "off":
        return False
    blockers = [why for why, hit in (("DistributedDataParallel (WORLD_SIZE > 1)", world > 1),
                                     ("interest-aware hard negatives (remi_hard_neg_beta > 0)",
                                      cfg.remi_hard_neg_beta > 0)) if hit]
    if cfg.sparse_item_embeddings == "on":
        if blockers:
            raise ValueError(f"sparse_item_embeddings='on' does not work with {' and '.join(blockers)}; "
                             "use 'auto' or 'off'")
        return True
    return not blockers and n_items >= SPARSE_AUTO_ITEMS


class SparseDenseOptimizer:
    """Two optimizers stepped as one: Adam/AdamW over the dense parameters, SparseAdam over the parameters with
    sparse gradients (the item table). The interface the training loop uses: zero_grad, step, state_dict."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer):
        self.parts = {"dense": dense, "sparse": sparse}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts.values():
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.parts.values():
            o.step()

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:  # train() checks the layout matches before resuming
        for k, o in self.parts.items():
            o.load_state_dict(state[k])


class _Schedulers:
    """One LR schedule applied to each part of a SparseDenseOptimizer."""

    def __init__(self, scheds: dict[str, torch.optim.lr_scheduler.LRScheduler]):
        self.parts = scheds

    def step(self) -> None:
        for s in self.parts.values():
            s.step()

    def get_last_lr(self) -> list[float]:
        return self.parts["dense"].get_last_lr()

    def state_dict(self) -> dict:
        return {k: s.state_dict() for k, s in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, s in self.parts.items():
            s.load_state_dict(state[k])


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """nn.utils.clip_grad_norm_ that also takes sparse gradients (its foreach norm does not): the total L2 norm
    over every gradient, all scaled by max_norm / norm when above it."""
    with_grad = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in with_grad):
        return nn.utils.clip_grad_norm_(with_grad, max_norm)
    for p in with_grad:
        if p.grad.is_sparse:  # duplicate rows summed first, so the norm is the dense gradient's
            p.grad = p.grad.coalesce()
    total = torch.linalg.vector_norm(torch.stack(
        [(p.grad._values() if p.grad.is_sparse else p.grad).detach().float().norm() for p in with_grad]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in with_grad:
        p.grad.mul_(coef.to(p.grad.dtype))  # in place on a coalesced sparse gradient too (scales its values)
    return total


def make_optimizer(params, cfg: TrainConfig, steps_per_epoch: int, sparse_params=()):
    """Adam/AdamW + linear warm-up, then constant, cosine (to 0 at `epochs`) or step decay. `sparse_params`
    (parameters with sparse gradients) go to SparseAdam under the same lr schedule (SparseDenseOptimizer)."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    sparse_ids = {id(p) for p in sparse_params}
    params = [p for p in params if id(p) not in sparse_ids]
    opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return 0.5 * (1 + float(np.cos(np.pi * t)))
        if cfg.schedule == "step":
            return cfg.step_decay ** (step // max(1, cfg.step_epochs * steps_per_epoch))
        return 1.0

    if not sparse_ids:
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
    sparse = torch.optim.SparseAdam(list(sparse_params), lr=cfg.lr)
    both = SparseDenseOptimizer(opt, sparse)
    return both, _Schedulers({k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in both.parts.items()})


def make_training_optimizer(loss_mod: LossModule, cfg: TrainConfig, steps_per_epoch: int, world: int = 1):
    """The optimizer and schedule `train` steps: resolves `sparse_item_embeddings` for this run, switches the
    model's item table to sparse gradients when on, and puts it under SparseAdam. -> (opt, sched, sparse)."""
    model = loss_mod.model
    sparse = use_sparse_item_embeddings(cfg, model.cfg.n_items, world)
    model.item_emb.sparse = sparse  # F.embedding then returns a sparse gradient for the rows a batch used
    opt, sched = make_optimizer(loss_mod.parameters(), cfg, steps_per_epoch,
                                sparse_params=[model.item_emb.weight] if sparse else ())
    return opt, sched, sparse


# ---- runtime -------------------------------------------------------------------------------------
def _dist_setup(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    return rank, world, dev


def pick_threads(cfg: TrainConfig, world: int) -> int:
    """Configured value, else the cores per local process (at most 8) — but 1 when the machine is already
    busy (load ≥ cores): oversubscribed OpenMP threads are many times slower than one thread."""
    if cfg.num_threads:
        return cfg.num_threads
    cpus = os.cpu_count() or 1
    if hasattr(os, "getloadavg") and os.getloadavg()[0] >= cpus:
        return 1
    return max(1, min(8, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world)))))


def _plot(log: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r for r in log if r.get("kind") == "epoch"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot([r["epoch"] for r in ep], [r["loss"] for r in ep], marker="o")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("train loss")
    ev = [r for r in ep if r.get("val_recall@50") is not None]
    ax[1].plot([r["epoch"] for r in ev], [r["val_recall@50"] for r in ev], marker="o", color="C1")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("valid Recall@50")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validate(model: MultiInterestModel, ds: Dataset, max_users: int | None) -> dict:
    from mirec.evaluate import evaluate

    was = model.training
    out = evaluate(model, ds, split="valid", n_values=(50,), max_users=max_users, collapse=False)["metrics"]
    model.train(was)
    return out


def train(dataset: str | Path | Dataset, model_cfg: ModelConfig, train_cfg: TrainConfig | None = None,
          out_dir: str | Path = "artifacts/models/model", progress: bool = True, resume: bool = False,
          on_eval: Callable[[int, dict], None] | None = None, examples: Examples | None = None) -> TrainResult:
    """Train `model_cfg` on the prepared dataset (a directory or a loaded `Dataset`, e.g. one re-split with
    another seed); best (validation Recall@50) weights -> out_dir/model.pt.
    examples: the training examples when they come from elsewhere than the dataset's own sequences (the Feast
    point-in-time frame: mirec.examples.FrameExamples); the dataset still gives the catalogue and validation.
    on_eval(epoch, validation metrics) is called after each validation on rank 0; an exception it raises
    (e.g. optuna.TrialPruned) ends training and propagates.
    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes files."""
    cfg = train_cfg or TrainConfig()
    rank, world, dev = _dist_setup(cfg)
    torch.set_num_threads(pick_threads(cfg, world))
    out = Path(out_dir)
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    mcfg = model_cfg.model_copy(update={"n_items": ds.n_items})
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build(mcfg).to(dev)
    model.attach_data(ds)  # catalogue metadata a model keeps with its weights (MultiInterestModel.attach_data)
    mcfg = model.cfg
    ex = examples if examples is not None else Examples(ds.train_sequences(), mcfg.max_len)
    repeat_rate = ex.repeat_rate()
    hist_neg = cfg.history_negatives == "on" or (cfg.history_negatives == "auto" and repeat_rate < 0.01)
    loss_mod = LossModule(model, cfg, ex.target_freq, history_negatives=hist_neg).to(dev)
    runner: nn.Module = loss_mod
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(loss_mod, device_ids=[dev.index] if dev.type == "cuda" else None)
    n_epoch = min(len(ex), cfg.samples_per_epoch or len(ex))
    steps_per_epoch = max(1, -(-n_epoch // cfg.batch_size) // world)
    opt, sched, sparse_emb = make_training_optimizer(loss_mod, cfg, steps_per_epoch, world)
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and dev.type == "cuda")
    start_epoch, step, best, best_epoch, bad, log = 0, 0, -1.0, 0, 0, []
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / TRAIN_CONFIG).write_text(cfg.model_dump_json(indent=2))
    torch.manual_seed(cfg.seed * 1000 + rank)  # routing noise / negatives differ per rank
    if resume and (out / LAST_FILE).exists():
        st = torch.load(out / LAST_FILE, map_location="cpu", weights_only=True)
        if "loss" in st:  # model + a learned temperature
            loss_mod.load_state_dict(st["loss"], strict=False)
        else:
            model.load_state_dict(st["model"])
        if (set(st["opt"]) == {"dense", "sparse"}) != sparse_emb:  # the optimizer's layout must match the run's
            raise ValueError(f"{out / LAST_FILE} was written with sparse_item_embeddings "
                             f"{'on' if not sparse_emb else 'off'}; resume with the setting the run started with")
        opt.load_state_dict(st["opt"])
        if "sched" in st:
            sched.load_state_dict(st["sched"])
        start_epoch, step, best, bad = int(st["epoch"]) + 1, int(st["step"]), float(st["best"]), int(st["bad"])
        best_epoch = int(st.get("best_epoch", 0))
        torch.set_rng_state(st["rng"][rank] if st["rng"].dim() == 2 else st["rng"])
        if (out / LOG_FILE).exists():
            log = [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines() if x.strip()]
    elif rank == 0:  # a fresh run must not leave an older run's best weights behind
        for f in (LOG_FILE, MODEL_FILE, LAST_FILE):
            (out / f).unlink(missing_ok=True)
    t_start = time.perf_counter()
    t_train, n_seen, stop, stopped_by = 0.0, 0, False, "epochs"
    prev_stage = st.get("stage") if resume and (out / LAST_FILE).exists() else None
    ran_epochs = 0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        stage = model.begin_epoch(epoch)  # a staged model (GemiRec) switches its stage here
        if prev_stage is not None and stage != prev_stage:  # a new stage: early stopping starts over
            best, bad = -1.0, 0
        prev_stage = stage
        rng = np.random.default_rng([cfg.seed, epoch])  # same order on every rank and on resume
        batches = ex.batches(cfg.batch_size, rng, cfg.samples_per_epoch, per_user=cfg.sampling == "users")
        per_rank = len(batches) // world
        batches = batches[rank * per_rank: (rank + 1) * per_rank] if world > 1 else batches
        t0 = time.perf_counter()
        tot, tot_rr, nb = 0.0, 0.0, 0
        bar = tqdm(batches, desc=f"{mcfg.name} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not progress or rank != 0, leave=False, mininterval=1.0)
        for ids in bar:
            seq, mask, tgt = (t.to(dev) for t in ex.collate(ids))
            uni = torch.randint(1, mcfg.n_items + 1, (cfg.num_negatives,), device=dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, ce, rr = runner(seq, mask, tgt, uni)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                clip_grad_norm(list(loss_mod.parameters()), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            n_seen += len(ids) * world
            tot, tot_rr, nb = tot + float(ce), tot_rr + float(rr), nb + 1
            if nb % 20 == 0:
                bar.set_postfix(loss=f"{tot / nb:.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                stop, stopped_by = True, "max_steps"
                break
            if cfg.max_time_s and time.perf_counter() - t_start >= cfg.max_time_s:
                stop, stopped_by = True, "max_time_s"
                break
        t_train += time.perf_counter() - t0
        ran_epochs += 1
        rec = {"kind": "epoch", "epoch": epoch + 1, "step": step, "loss": tot / max(nb, 1),
               "rr_loss": tot_rr / max(nb, 1), "epoch_s": time.perf_counter() - t0, "lr": sched.get_last_lr()[0]}
        if loss_mod.cosine:
            rec["temperature"] = loss_mod.temperature
        if stage is not None:
            rec["stage"] = stage
        do_eval = (epoch + 1) % cfg.eval_every == 0 or stop or epoch + 1 == cfg.epochs
        flag = [False]
        rng_state = torch.get_rng_state()
        if world > 1 and dev.type == "cpu":  # every rank's CPU RNG, so a resumed DDP run is exact too
            states = [torch.empty_like(rng_state) for _ in range(world)]
            dist.all_gather(states, rng_state)
            rng_state = torch.stack(states)
        if rank == 0:
            val = None
            if do_eval:
                val = validate(model, ds, cfg.eval_max_users)
                rec["val_recall@50"] = val["recall@50"]
                rec["val_ndcg@50"] = val["ndcg@50"]
                if val["recall@50"] is not None and val["recall@50"] > best:
                    best, best_epoch, bad = val["recall@50"], epoch + 1, 0
                    save_checkpoint(model, out, ds.root / "items.parquet")
                else:
                    bad += 1
            log.append(rec)
            with open(out / LOG_FILE, "a") as f:
                f.write(json.dumps(rec) + "\n")
            torch.save({"model": model.state_dict(), "loss": loss_mod.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "epoch": epoch, "step": step, "best": best,
                        "best_epoch": best_epoch, "bad": bad, "rng": rng_state, "stage": stage}, out / LAST_FILE)
            if progress:
                tqdm.write(f"{mcfg.name} epoch {epoch + 1}: loss {rec['loss']:.4f}"
                           + (f"  valid R@50 {rec['val_recall@50']:.4f}" if "val_recall@50" in rec else ""))
            if bad >= cfg.patience and not stop:
                stopped_by = "early_stopping"
            flag = [stop or bad >= cfg.patience]
            if val is not None and on_eval is not None:
                on_eval(epoch + 1, val)
        if world > 1:
            dist.broadcast_object_list(flag, src=0)
        if flag[0]:
            break
    metrics = {"best_val_recall@50": best, "best_epoch": best_epoch, "epochs": ran_epochs, "steps": step,
               "stopped_by": stopped_by, "train_time_s": t_train,
               "samples_per_s": n_seen / t_train if t_train > 0 else None, "world_size": world,
               "device": str(dev), "amp_bf16": use_amp, "train_examples": len(ex),
               "examples_per_epoch": n_epoch, "repeat_rate": repeat_rate, "history_negatives": hist_neg,
               "sparse_item_embeddings": sparse_emb}
    if loss_mod.cosine:
        metrics["temperature"] = loss_mod.temperature
    if rank == 0:
        if not (out / MODEL_FILE).exists():
            save_checkpoint(model, out, ds.root / "items.parquet")
        _plot(log, out / CURVE_FILE)
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        write_diversity_calibration(out, ds)
    if world > 1:
        dist.barrier()
    return TrainResult(out, metrics, model)

# Distributed: `torchrun --nproc_per_node 2 -m mirec.cli train --data D --model mind --out O` (the CLI lives above
# this module; mirec.train imports nothing from it).
