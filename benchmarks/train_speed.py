"""Training speed at a fixed configuration: forward + backward + Adam step, samples/s per model.

    .venv/bin/python benchmarks/train_speed.py                      # batch 256, L 50, d 64, K 4, 2 threads
    .venv/bin/python benchmarks/train_speed.py --profile mind       # + where the time goes (torch.profiler)
    .venv/bin/python benchmarks/train_speed.py --items 10000 100000 1000000 --models comirec_sa --sparse off,on \
        --out benchmarks/results/train_speed_sparse.json         # dense Adam vs sparse item table by catalogue size

Every batch is full length (L = 50 real items), so the figure does not depend on a dataset's length mix;
the loss is the shipped default (cosine/τ, in-batch + 1,024 shared uniform negatives, accidental hits
masked) through `mirec.train.LossModule`, the same module `mirec train` runs. The peer library's figures
for the same configuration on this kind of machine (issue 13): 9.6k samples/s (MIND), 9.5k (ComiRec-SA).
Run it on a quiet machine: anything else on the cores shows up in the figures.
Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.models import ModelConfig, build  # noqa: E402
from mirec.train import LossModule, TrainConfig, clip_grad_norm, make_training_optimizer  # noqa: E402

PEER = {"mind": 9600, "comirec_sa": 9500}


def measure(name: str, args, profile: bool = False, sparse: str = "auto", n_items: int = 10000) -> dict:
    torch.manual_seed(0)
    mcfg = ModelConfig(name=name, n_items=n_items, dim=args.dim, K=args.k, max_len=args.max_len)
    model = build(mcfg)
    tcfg = TrainConfig(batch_size=args.batch, num_negatives=args.negatives, sparse_item_embeddings=sparse)
    lm = LossModule(model, tcfg, np.ones(n_items))
    opt, sched, sparse_emb = make_training_optimizer(lm, tcfg, 100)  # as mirec.train.train sets it up
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(1, n_items + 1, (args.batch, args.max_len), generator=g),
                torch.randint(1, n_items + 1, (args.batch,), generator=g)) for _ in range(8)]
    mask = torch.ones(args.batch, args.max_len, dtype=torch.bool)

    def step(i: int) -> None:
        seq, tgt = batches[i % len(batches)]
        uni = torch.randint(1, n_items + 1, (args.negatives,))
        loss, _, _ = lm(seq, mask, tgt, uni)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(list(lm.parameters()), tcfg.grad_clip)
        opt.step()
        sched.step()

    model.train()
    for i in range(args.warmup):
        step(i)
    times = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(i)
        times.append(time.perf_counter() - t0)
    sps = [args.steps * args.batch / t for t in times]
    out = {"model": name, "items": n_items, "sparse_item_embeddings": sparse_emb,
           "samples_per_s": float(np.median(sps)), "samples_per_s_all": [round(x) for x in sps]}
    if name in PEER:
        out["peer_samples_per_s"] = PEER[name]
        out["ratio_to_peer"] = out["samples_per_s"] / PEER[name]
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            for i in range(20):
                step(i)
        table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        out["profile_top"] = table
        print(table)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mind,comirec_sa,comirec_dr,youtubednn,sasrec")
    ap.add_argument("--items", type=int, nargs="+", default=[10000], help="catalogue sizes, each measured")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", default="", help="comma list of models to profile")
    ap.add_argument("--sparse", default="auto", help="comma list of TrainConfig.sparse_item_embeddings settings "
                    "(auto/on/off), each model measured under each")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prof = {m.strip() for m in args.profile.split(",") if m.strip()}
    rows = [measure(m.strip(), args, m.strip() in prof, sp.strip(), n) for n in args.items
            for m in args.models.split(",") if m.strip() for sp in args.sparse.split(",") if sp.strip()]
    print(f"\nbatch {args.batch}, L {args.max_len}, d {args.dim}, K {args.k}, {args.negatives} uniform + in-batch "
          f"negatives, {args.threads} threads (median of {args.repeats} × {args.steps} steps)\n")
    print("| model | items | sparse item table | samples/s | peer | ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_to_peer']:.2f}×" if "ratio_to_peer" in r else "–"
        print(f"| {r['model']} | {r['items']:,} | {'yes' if r['sparse_item_embeddings'] else 'no'} | "
              f"{r['samples_per_s']:.0f} | {r.get('peer_samples_per_s', '–')} | {ratio} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "settings": {k: str(v) for k, v in vars(args).items()},
                                    "machine": {"platform": platform.platform(), "torch": torch.__version__},
                                    "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
