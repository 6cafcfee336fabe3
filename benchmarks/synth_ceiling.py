"""How high can Recall@50 go on the synthetic benchmark data? The Bayes ceiling, for reading quality.json.

    .venv/bin/python benchmarks/synth_ceiling.py                    # the benchmark's synthetic set, 3 runs
    .venv/bin/python benchmarks/synth_ceiling.py --data DIR --runs 5

The synthetic generator (mirec/data/synth.py) draws each event from a known mixture: an interest c with the
user's weight w_c, then an item of category c by its within-category popularity (plus 5% uniform noise). No
recommender can beat ranking items by that generative probability, so for every test user of the same
splits as benchmarks/quality.py (run r: split seed + r) this script ranks items by

- ``oracle``: Σ_c w_c P(item | c), the planted weights of the phase the targets come from (phase 1 = the
  second half of the sequence, after any drift) and P(item | c) = training popularity within c: the
  ceiling (a Bayes-optimal list for i.i.d. draws from a known mixture);
- ``category_mixture``: the same with w_c estimated as the category shares of the user's input history
  (what a model that knew the categories could reach from the history alone).

Both need the planted categories, so this runs on synthetic data only. Targets are a few draws per user,
so even the oracle is far from 1. Writes benchmarks/results/synth_ceiling.json
{"rows": [{"dataset", "reference", "runs", "recall@50", "recall@50_std", "by_n_interests": {k: recall}}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.data import Dataset  # noqa: E402
from mirec.metrics import recall_at  # noqa: E402
from benchmarks.quality import prepare  # noqa: E402

N = 50


def ceiling_run(ds: Dataset) -> dict[str, dict]:
    """{reference: {"recall": mean, "by_k": {n_interests: mean}}} over the test users of one split."""
    cat = np.asarray(ds.item_category, np.int64)
    C = int(cat.max()) + 1
    pop = np.zeros(ds.n_items)
    for s in ds.train_sequences().values():
        np.add.at(pop, s, 1.0)
    p_item = pop / np.maximum(np.bincount(cat, weights=pop, minlength=C)[cat], 1.0)  # P(item | its category)
    truth = ds.truth()
    phase1 = truth[truth.phase == 1]
    weights = {u: g for u, g in phase1.groupby("user_idx")}
    out: dict[str, dict[int, list[float]]] = {"oracle": {}, "category_mixture": {}}
    for ex in ds.eval_examples("test"):
        g = weights[ex.user_idx]
        k = int(g.n_interests.iloc[0])
        w = np.zeros(C)
        np.add.at(w, g.category_idx.to_numpy(), g.weight.to_numpy())
        w_hist = np.bincount(cat[ex.history], minlength=C) / max(len(ex.history), 1)
        for ref, wc in (("oracle", w), ("category_mixture", w_hist)):
            top = np.argsort(-(wc[cat] * p_item), kind="stable")[:N]
            out[ref].setdefault(k, []).append(recall_at(top, ex.targets, N))
    return {ref: {"recall": float(np.mean(sum(by_k.values(), []))),
                  "by_k": {kk: float(np.mean(v)) for kk, v in sorted(by_k.items())}} for ref, by_k in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synth", help="a prepared synthetic dataset directory, or `synth`")
    ap.add_argument("--runs", type=int, default=3, help="splits (run r: split seed + r), as benchmarks/quality.py")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mirec_bench_data"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth_ceiling.json")
    args = ap.parse_args()
    base = Dataset(prepare(args.data, args.cache))
    if base.truth() is None:
        raise SystemExit(f"error: {base.root} has no planted truth (synthetic data only)")
    seed = int(base.meta.get("split_seed", 2021))
    runs = [ceiling_run(base.resplit(seed + r) if r else base) for r in range(args.runs)]
    rows = []
    print(f"{'reference':<18} {'runs':>4} {'recall@50':>16}   by planted #interests")
    for ref in ("oracle", "category_mixture"):
        v = [r[ref]["recall"] for r in runs]
        ks = sorted({k for r in runs for k in r[ref]["by_k"]})
        by_k = {str(k): float(np.mean([r[ref]["by_k"][k] for r in runs if k in r[ref]["by_k"]])) for k in ks}
        row = {"dataset": base.name, "reference": ref, "runs": len(v), "recall@50": float(np.mean(v)),
               "recall@50_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "by_n_interests": by_k}
        rows.append(row)
        print(f"{ref:<18} {len(v):>4} {row['recall@50']:.4f} ± {row['recall@50_std']:.4f}   "
              + "  ".join(f"k={k}: {x:.3f}" for k, x in by_k.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
