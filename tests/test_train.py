"""Training: losses, REMI options, determinism by seed, checkpoints (weights_only), resume, bf16 twin, DDP on CPU."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mirec.config import DataConfig, SynthConfig
from mirec.data import Dataset, prepare
from mirec.models import ModelConfig, build, pad_histories
from mirec.train import (LossModule, TrainConfig, hard_negatives, load_model, routing_regularization, train)

TINY = dict(epochs=1, batch_size=64, num_negatives=16, samples_per_epoch=640, num_threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    cfg = DataConfig(out_dir=str(out), synth=SynthConfig(n_users=120, n_items=150, n_categories=5, seq_len=(10, 20)))
    prepare(cfg, progress=False)
    return out


def _mcfg(name="mind"):
    return ModelConfig(name=name, dim=8, K=2, max_len=10)


# ---- losses ----------------------------------------------------------------------------------------
def test_routing_regularization_matches_remi_form_and_ignores_padding():
    torch.manual_seed(0)
    A = torch.softmax(torch.randn(3, 2, 5), -1)
    mask = torch.ones(3, 5, dtype=torch.bool)
    d = 8
    C = (A - A.mean(2, keepdim=True))
    ref = (torch.diagonal(C @ C.transpose(1, 2) / d, dim1=-2, dim2=-1).norm(dim=1) ** 2).sum()  # REMI code
    torch.testing.assert_close(routing_regularization(A, mask, d), ref)
    uniform = torch.full((1, 2, 4), 0.25)
    assert routing_regularization(uniform, torch.ones(1, 4, dtype=torch.bool), d) == 0
    onehot = torch.tensor([[[1.0, 0, 0, 0]]])  # var*L = 1 - 1/4 = 0.75 -> (0.75/d)^2
    assert routing_regularization(onehot, torch.ones(1, 4, dtype=torch.bool), d).item() == pytest.approx((0.75 / d) ** 2)
    padded = torch.cat([A, torch.zeros(3, 2, 3)], -1)
    pmask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(routing_regularization(padded, pmask, d), ref)


def test_hard_negatives_follow_interest_scores():
    table = torch.zeros(6, 2)  # row 0 = padding
    table[1:] = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0], [0.5, 0.5]])
    z = torch.tensor([[[1.0, 0.0], [0.0, 0.2]]])  # max_k z_k·v: items 1..5 -> 1, .2, 0, 0, .5
    torch.manual_seed(0)
    hard = hard_negatives(z, table, 2000, beta=50.0, pool=100)
    assert hard.shape == (1, 2000) and (hard == 1).float().mean() > 0.99
    soft = hard_negatives(z, table, 4000, beta=0.0, pool=100)  # β = 0: uniform over items 1..5
    counts = torch.bincount(soft[0], minlength=6)[1:].float() / 4000
    assert torch.all((counts - 0.2).abs() < 0.04) and not (soft == 0).any()


def _loss_setup(negatives, logq=False, similarity="dot", history_negatives=False, **train):
    torch.manual_seed(0)
    m = build(ModelConfig(name="comirec_sa", n_items=20, dim=4, K=2, max_len=6, similarity=similarity,
                          selection="hard")).train()
    lm = LossModule(m, TrainConfig(negatives=negatives, logq=logq, num_negatives=3, **train), np.arange(1, 21),
                    history_negatives=history_negatives)
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5])], 6)
    return m, lm, seq, mask, torch.tensor([7, 9])


def test_sampled_softmax_masks_accidental_hits():
    m, lm, seq, mask, tgt = _loss_setup("uniform")
    loss, ce, _ = lm(seq, mask, tgt, torch.tensor([7, 7, 7]))  # all negatives = example 0's target
    user, _ = m(seq, mask, tgt)
    E = m.item_emb.weight
    # example 0: only the positive is left -> 0; example 1: normal softmax over 1 + 3 columns
    l1 = torch.cat([(user[1] * E[9]).sum()[None], (E[[7, 7, 7]] @ user[1])])
    expected = (0 + (-torch.log_softmax(l1, 0)[0])) / 2
    torch.testing.assert_close(ce, expected.detach(), rtol=1e-5, atol=1e-6)


def test_in_batch_logq_correction():
    m, lm, seq, mask, tgt = _loss_setup("in_batch", logq=True)
    _, ce, _ = lm(seq, mask, tgt, torch.tensor([1, 2, 3]))
    user, _ = m(seq, mask, tgt)
    E = m.item_emb.weight
    p = torch.arange(1, 21, dtype=torch.float32) / torch.arange(1, 21).sum()  # target frequency of item_idx
    logit = user @ E[tgt].T - torch.log(2 * p[tgt - 1])[None, :]  # columns = the batch's targets
    expected = torch.nn.functional.cross_entropy(logit, torch.arange(2))
    torch.testing.assert_close(ce, expected.detach(), rtol=1e-5, atol=1e-6)
    _, ce_plain, _ = _loss_setup("in_batch", logq=False)[1](seq, mask, tgt, torch.tensor([1, 2, 3]))
    assert not torch.isclose(ce, ce_plain)


def test_cosine_logits_with_temperature_and_history_negatives():
    m, lm, seq, mask, tgt = _loss_setup("uniform", similarity="cos", history_negatives=True, temperature=0.2)
    neg = torch.tensor([1, 11, 12])
    _, ce, _ = lm(seq, mask, tgt, neg)
    V = m.serving_interests(seq, mask)  # [B, K, d], unit length (interest head included)
    E = torch.nn.functional.normalize(m.item_emb.weight, dim=-1)
    losses = []
    for b in range(2):
        user = V[b, (V[b] @ E[tgt[b]] / 0.2).argmax()]  # hard selection (ComiRec-SA), in logit units
        hist = seq[b][mask[b]]
        cols = torch.cat([(user @ E[tgt[b]])[None], E[neg] @ user, E[hist] @ user]) / 0.2
        losses.append(-torch.log_softmax(cols, 0)[0])
    torch.testing.assert_close(ce, torch.stack(losses).mean().detach(), rtol=1e-5, atol=1e-6)
    # without history negatives the loss is smaller (fewer competitors), and a learned τ is a parameter
    _, lm2, *_ = _loss_setup("uniform", similarity="cos", temperature=0.2)
    assert lm2(seq, mask, tgt, neg)[1] < ce
    _, lm3, *_ = _loss_setup("uniform", similarity="cos", temperature=0.2, learn_temperature=True)
    assert any(n == "log_inv_tau" for n, _ in lm3.named_parameters()) and lm3.temperature == pytest.approx(0.2)


def test_max_selection_scores_every_candidate_by_its_best_interest():
    torch.manual_seed(0)
    m = build(ModelConfig(name="comirec_sa", n_items=20, dim=4, K=2, max_len=6, selection="max")).train()
    lm = LossModule(m, TrainConfig(negatives="mixed", num_negatives=3, temperature=0.5), np.arange(1, 21))
    seq, mask = pad_histories([np.array([1, 2, 3]), np.array([4, 5])], 6)
    tgt, neg = torch.tensor([7, 9]), torch.tensor([11, 12, 13])
    _, ce, _ = lm(seq, mask, tgt, neg)
    V = m.serving_interests(seq, mask)  # unit length, interest head included
    E = torch.nn.functional.normalize(m.item_emb.weight, dim=-1)
    losses = []
    for b in range(2):
        best = lambda j: (V[b] @ E[j]).max()  # noqa: E731  the merge's score of item j
        other = tgt[1 - b]
        cols = torch.stack([best(tgt[b])] + [best(j) for j in neg] + [best(other)]) / 0.5
        losses.append(-torch.log_softmax(cols, 0)[0])
    torch.testing.assert_close(ce, torch.stack(losses).mean().detach(), rtol=1e-5, atol=1e-6)


def test_history_negatives_mask_the_target_when_it_repeats():
    m, lm, seq, mask, _ = _loss_setup("uniform", similarity="cos", history_negatives=True)
    assert seq[0].tolist()[:3] == [2, 3, 4] and seq[1].tolist()[:2] == [5, 6]  # shifted ids
    tgt = torch.tensor([3, 9])  # example 0's target repeats its history item 3: that column must be masked
    _, ce, _ = lm(seq, mask, tgt, torch.tensor([11, 12, 13]))
    user, _ = m(seq, mask, tgt, lm.scale)
    E = torch.nn.functional.normalize(m.item_emb.weight, dim=-1)
    cols0 = torch.cat([(user[0] @ E[3])[None], E[[11, 12, 13]] @ user[0], E[[2, 4]] @ user[0]]) * lm.scale
    cols1 = torch.cat([(user[1] @ E[9])[None], E[[11, 12, 13]] @ user[1], E[[5, 6]] @ user[1]]) * lm.scale
    want = (-torch.log_softmax(cols0, 0)[0] - torch.log_softmax(cols1, 0)[0]) / 2
    torch.testing.assert_close(ce, want.detach(), rtol=1e-5, atol=1e-6)


def test_optimizer_schedules():
    from mirec.train import make_optimizer

    p = [torch.nn.Parameter(torch.zeros(1))]
    lrs = {}
    for sched in ("constant", "cosine", "step"):
        opt, s = make_optimizer(p, TrainConfig(lr=1.0, schedule=sched, warmup_steps=2, epochs=2, step_epochs=1), 5)
        seen = []
        for _ in range(10):
            seen.append(s.get_last_lr()[0])
            opt.step()
            s.step()
        lrs[sched] = seen
    assert lrs["constant"][:3] == [0.5, 1.0, 1.0]  # linear warm-up, then flat
    assert lrs["cosine"][1] == 1.0 and lrs["cosine"][9] < 0.05 and sorted(lrs["cosine"][1:], reverse=True) == lrs["cosine"][1:]
    assert lrs["step"][4] == 1.0 and lrs["step"][5] == 0.5  # halved after one epoch of 5 steps
    opt, _ = make_optimizer(p, TrainConfig(optimizer="adamw", weight_decay=0.1), 5)
    assert isinstance(opt, torch.optim.AdamW)


def test_sparse_item_embeddings_resolution():
    from mirec.train import SPARSE_AUTO_ITEMS, use_sparse_item_embeddings as use

    auto = TrainConfig()
    assert not use(auto, SPARSE_AUTO_ITEMS - 1, 1) and use(auto, SPARSE_AUTO_ITEMS, 1)
    assert not use(auto, 10 ** 6, 2)  # DDP: dense
    assert not use(TrainConfig(remi_hard_neg_beta=1.0), 10 ** 6, 1)  # hard negatives read the whole table
    assert use(TrainConfig(sparse_item_embeddings="on"), 10, 1)
    assert not use(TrainConfig(sparse_item_embeddings="off"), 10 ** 6, 1)
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        use(TrainConfig(sparse_item_embeddings="on"), 10, 2)
    with pytest.raises(ValueError, match="hard negatives"):
        use(TrainConfig(sparse_item_embeddings="on", remi_hard_neg_beta=0.5), 10, 1)


def test_clip_grad_norm_takes_sparse_gradients():
    from mirec.train import clip_grad_norm

    torch.manual_seed(0)
    idx, vals = torch.tensor([[1, 3, 1]]), torch.randn(3, 4) * 10  # row 1 twice: summed before the norm
    sp = torch.nn.Parameter(torch.zeros(5, 4))
    sp.grad = torch.sparse_coo_tensor(idx, vals, (5, 4), check_invariants=True)
    de = torch.nn.Parameter(torch.zeros(5, 4))
    de.grad = sp.grad.to_dense().clone()
    other = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
    for o in other:
        o.grad = torch.randn(3)
    ref_grads = [o.grad.clone() for o in other]
    n_ref = torch.nn.utils.clip_grad_norm_([de] + other, 1.0)
    clipped_ref = [o.grad.clone() for o in other]
    for o, g in zip(other, ref_grads):
        o.grad = g.clone()
    n = clip_grad_norm([sp] + other, 1.0)
    torch.testing.assert_close(n, n_ref)
    torch.testing.assert_close(sp.grad.to_dense(), de.grad)
    for o, g in zip(other, clipped_ref):
        torch.testing.assert_close(o.grad, g)
    assert sp.grad.to_dense().norm() < de.grad.norm() + 1e-6 <= 1.0 + 1e-5


def test_sparse_item_table_steps_like_adam_on_touched_rows_and_leaves_the_rest():
    from mirec.train import SparseDenseOptimizer, clip_grad_norm, make_optimizer

    cfg = TrainConfig(num_negatives=8, temperature=0.2)
    torch.manual_seed(0)
    dense = build(ModelConfig(name="comirec_sa", n_items=40, dim=8, K=2, max_len=6))
    sparse = build(ModelConfig(name="comirec_sa", n_items=40, dim=8, K=2, max_len=6))
    sparse.load_state_dict(dense.state_dict())
    sparse.item_emb.sparse = True
    runs = []
    for m, sp in ((dense, ()), (sparse, [sparse.item_emb.weight])):
        lm = LossModule(m, cfg, np.ones(40))
        opt, sched = make_optimizer(lm.parameters(), cfg, 10, sparse_params=sp)
        runs.append((m, lm, opt, sched))
    assert isinstance(runs[1][2], SparseDenseOptimizer) and isinstance(runs[0][2], torch.optim.Adam)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(1, 21, (4, 6), generator=g), torch.randint(1, 21, (4,), generator=g),
                torch.randint(1, 21, (8,), generator=g)),  # step 1: items 1..20
               (torch.randint(21, 41, (4, 6), generator=g), torch.randint(21, 41, (4,), generator=g),
                torch.randint(21, 41, (8,), generator=g))]  # step 2: items 21..40 only
    mask = torch.ones(4, 6, dtype=torch.bool)
    after = []
    for m, lm, opt, sched in runs:
        snaps = []
        for seq, tgt, uni in batches:
            torch.manual_seed(5)  # same routing noise in both models
            loss, _, _ = lm(seq, mask, tgt, uni)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_grad_norm(list(lm.parameters()), 0.5)
            opt.step()
            sched.step()
            snaps.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        after.append(snaps)
    (d1, d2), (s1, s2) = after
    assert runs[1][0].item_emb.weight.grad.is_sparse
    for k in d1:  # first step: Adam and SparseAdam make the same update (m = v = 0 before it)
        torch.testing.assert_close(s1[k], d1[k], rtol=1e-5, atol=1e-6)
    touched1 = torch.unique(torch.cat([x.flatten() for x in batches[0]]))
    untouched2 = touched1[touched1 <= 20]  # in step 1, not in step 2
    assert torch.equal(s2["item_emb.weight"][untouched2], s1["item_emb.weight"][untouched2])  # lazy: stays
    assert not torch.equal(d2["item_emb.weight"][untouched2], d1["item_emb.weight"][untouched2])  # dense: momentum


def test_train_auto_turns_the_sparse_item_table_on_by_catalogue_size(tiny, tmp_path, monkeypatch):
    import mirec.train as mt

    r = train(tiny, _mcfg("comirec_sa"), TrainConfig(max_steps=2, **TINY), tmp_path / "small", progress=False)
    assert r.metrics["sparse_item_embeddings"] is False  # the tiny catalogue is far below SPARSE_AUTO_ITEMS
    monkeypatch.setattr(mt, "SPARSE_AUTO_ITEMS", Dataset(tiny).n_items)  # as if this catalogue were large
    r = train(tiny, _mcfg("comirec_sa"), TrainConfig(max_steps=2, **TINY), tmp_path / "large", progress=False)
    assert r.metrics["sparse_item_embeddings"] is True and r.model.item_emb.weight.grad.is_sparse


def test_train_with_sparse_item_table_resumes_exactly(tiny, tmp_path):
    cfg2 = TrainConfig(seed=1, sparse_item_embeddings="on", **{**TINY, "epochs": 2, "patience": 5})
    r = train(tiny, _mcfg("comirec_sa"), cfg2, tmp_path / "full", progress=False)
    assert r.metrics["sparse_item_embeddings"] is True and r.metrics["best_val_recall@50"] >= 0
    train(tiny, _mcfg("comirec_sa"), cfg2.model_copy(update={"epochs": 1}), tmp_path / "res", progress=False)
    train(tiny, _mcfg("comirec_sa"), cfg2, tmp_path / "res", progress=False, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "res" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="sparse"):  # a dense run's optimizer state does not resume sparse
        train(tiny, _mcfg("comirec_sa"), cfg2.model_copy(update={"sparse_item_embeddings": "off"}), tmp_path / "res",
              progress=False, resume=True)
    model, _ = load_model(tmp_path / "full")
    assert model.item_vectors().shape[0] == Dataset(tiny).n_items


# ---- training runs ---------------------------------------------------------------------------------
def _weights(d):
    return torch.load(d / "model.pt", weights_only=True)


def test_train_writes_artifacts_and_is_deterministic(tiny, tmp_path):
    r1 = train(tiny, _mcfg(), TrainConfig(seed=3, **TINY), tmp_path / "a", progress=False)
    for f in ("model.pt", "model_config.json", "metrics.jsonl", "training_curve.png", "items.parquet", "last.pt"):
        assert (tmp_path / "a" / f).exists(), f
    log = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 1 and np.isfinite(log[0]["loss"]) and "val_recall@50" in log[0]
    assert r1.metrics["samples_per_s"] > 0 and 0 <= r1.metrics["best_val_recall@50"] <= 1
    model, cfg = load_model(r1.checkpoint)  # weights_only=True inside
    assert cfg.n_items == Dataset(tiny).n_items and cfg.name == "mind"
    train(tiny, _mcfg(), TrainConfig(seed=3, **TINY), tmp_path / "b", progress=False)
    train(tiny, _mcfg(), TrainConfig(seed=4, **TINY), tmp_path / "c", progress=False)
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["item_emb.weight"], wc["item_emb.weight"])


def test_training_improves_over_init_and_remi_options_run(tiny, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 3, "samples_per_epoch": 1280}, remi_rr_weight=1.0, remi_hard_neg_beta=1.0)
    r = train(tiny, _mcfg("comirec_sa"), cfg, tmp_path / "sa", progress=False)
    log = [json.loads(x) for x in (tmp_path / "sa" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] and log[0]["rr_loss"] > 0
    assert r.metrics["best_val_recall@50"] > 0


def test_resume_equals_uninterrupted(tiny, tmp_path):
    cfg2 = TrainConfig(seed=1, **{**TINY, "epochs": 2, "patience": 5})
    train(tiny, _mcfg(), cfg2, tmp_path / "full", progress=False)
    train(tiny, _mcfg(), TrainConfig(seed=1, **{**TINY, "epochs": 1, "patience": 5}), tmp_path / "res", progress=False)
    train(tiny, _mcfg(), cfg2, tmp_path / "res", progress=False, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "res" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "res" / "metrics.jsonl").read_text().splitlines()) == 2


def test_bf16_autocast_cpu_twin(tiny, tmp_path):
    r = train(tiny, _mcfg(), TrainConfig(amp="bf16", max_steps=3, **TINY), tmp_path / "bf", progress=False)
    assert r.metrics["amp_bf16"] and r.metrics["steps"] == 3
    model, _ = load_model(tmp_path / "bf")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- DDP on CPU (gloo, 2 processes) ----------------------------------------------------------------
def _ddp_worker(rank, world, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch.distributed as dist

    r = train(data, _mcfg(), TrainConfig(**{**TINY, "epochs": 2, "patience": 5}), out, progress=False)
    torch.save({"metrics": {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))},
                "params": {k: v.detach().clone() for k, v in r.model.state_dict().items()}}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_processes_gloo(tiny, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, port, str(tiny), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["metrics"]["world_size"] == 2 and r0["metrics"]["steps"] == r1["metrics"]["steps"] > 0
    # both ranks hold the same parameters after training (gradients were all-reduced)...
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    # ...and training moved them away from the initialisation
    torch.manual_seed(42)  # TrainConfig's default seed: the same initialisation as in train()
    init = build(_mcfg().model_copy(update={"n_items": Dataset(tiny).n_items})).state_dict()
    assert not torch.equal(init["item_emb.weight"], r0["params"]["item_emb.weight"])
    assert (out / "model.pt").exists() and (out / "training_curve.png").exists()


def test_cli_train_then_evaluate(tiny, tmp_path):
    from typer.testing import CliRunner

    from mirec.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {dim: 8, K: 2, max_len: 10}\ntrain: {batch_size: 64, num_negatives: 16, num_threads: 1}\n")
    r = CliRunner().invoke(app, ["train", "--data", str(tiny), "--model", "comirec_dr", "--out", str(tmp_path / "m"),
                                 "--config", str(cfg), "--epochs", "1", "--max-steps", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "model_config.json").read_text())["name"] == "comirec_dr"
    r = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "m"), "--data", str(tiny),
                                 "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "metrics.json").exists() and "recall@50" in r.output
    bad = CliRunner().invoke(app, ["train", "--data", str(tiny), "--out", str(tmp_path / "x"), "--config", str(cfg),
                                   "--k", "0"])
    from mirec.errors import ConfigError

    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)  # one-line error, not a traceback


def test_budget_callback_and_per_user_sampling(tiny, tmp_path):
    seen = []
    r = train(tiny, _mcfg(), TrainConfig(**{**TINY, "epochs": 50, "patience": 50, "max_time_s": 0.5}), tmp_path / "t",
              progress=False, on_eval=lambda ep, val: seen.append((ep, val["recall@50"])))
    assert r.metrics["stopped_by"] == "max_time_s" and r.metrics["epochs"] < 50
    assert [e for e, _ in seen] == list(range(1, r.metrics["epochs"] + 1))  # called after every validation
    assert 1 <= r.metrics["best_epoch"] <= r.metrics["epochs"] and (tmp_path / "t" / "model.pt").exists()

    class Stop(Exception):
        pass

    def stop_at_2(ep, val):
        if ep == 2:
            raise Stop

    with pytest.raises(Stop):  # e.g. optuna.TrialPruned: ends training and propagates
        train(tiny, _mcfg(), TrainConfig(**{**TINY, "epochs": 5, "patience": 5}), tmp_path / "p", progress=False,
              on_eval=stop_at_2)
    # an epoch is one full pass by default; per-user sampling draws as many examples, users equally likely
    from mirec.train import Examples

    ex = Examples({0: np.arange(101), 1: np.arange(11)}, max_len=5)
    assert len(ex) == 110
    rng = np.random.default_rng(0)
    ids = np.concatenate(ex.batches(10, rng, per_user=True))
    assert len(ids) == 110 and abs((ex.sid[ids] == 1).mean() - 0.5) < 0.15  # 10 of 110 positions, half the draws
    assert len(np.concatenate(ex.batches(10, rng))) == 110


def test_resplit_redraws_users_only(tiny):
    ds = Dataset(tiny)
    other = ds.resplit(7)
    assert other.meta["split_seed"] == 7 and ds.meta["split_seed"] != 7
    a, b = ds.users["split"].to_numpy(), other.users["split"].to_numpy()
    assert (a != b).any() and sorted(a.tolist()) == sorted(b.tolist())  # same 8:1:1 sizes, other users
    assert other.interactions is ds.interactions and ds.users["split"].tolist() == a.tolist()
    assert {e.user_idx for e in other.eval_examples("test")} == set(other.users_in("test").tolist())
    assert (ds.resplit(7).users["split"] == other.users["split"]).all()  # deterministic in the seed
