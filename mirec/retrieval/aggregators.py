"""Aggregators: turn K per-interest candidate lists into one list of n items.

A small registry (like Feast's pluggable parts): `@register("name")` on a function
`(scores[K, M], items[K, M], ctx) -> list[Recommendation]`. Evaluation and the serving handler
both call `get_aggregator(name)`, so what is served is what was evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np


class Recommendation(NamedTuple):
    item_idx: int
    score: float
    interest: int  # which interest (0..K-1) supplied the item


@dataclass
class AggregationContext:
    n: int
    item_category: np.ndarray  # [N] category_idx per item
    exclude: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # item_idx not to serve
    history: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # the user's items
    interests: np.ndarray | None = None  # [K, d]
    interest_weights: np.ndarray | None = None  # [K] the user's signal per interest (attention mass)
    item_vectors: np.ndarray | None = None  # [N, d] for embedding similarity
    item_popularity: np.ndarray | None = None  # [N]
    diversity: float | None = None  # per-request knob (controllable lambda)
    params: dict = field(default_factory=dict)  # aggregator settings from config


Aggregator = Callable[[np.ndarray, np.ndarray, AggregationContext], list[Recommendation]]
_REGISTRY: dict[str, Aggregator] = {}


def register(name: str) -> Callable[[Aggregator], Aggregator]:
    def deco(fn: Aggregator) -> Aggregator:
        _REGISTRY[name] = fn
        return fn
    return deco


def get_aggregator(name: str) -> Aggregator:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown aggregator {name!r}; known: {sorted(_REGISTRY)}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


def candidate_pool(scores: np.ndarray, items: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the K lists, de-duplicated (an item keeps its best score and that interest),
    excluded items and FAISS padding (-1) removed. -> (item_idx, score, interest), best first."""
    k, m = items.shape
    flat_items = items.reshape(-1)
    flat_scores = scores.reshape(-1)
    flat_interest = np.repeat(np.arange(k), m)
    ok = flat_items >= 0
    if len(exclude):
        ok &= ~np.isin(flat_items, exclude)
    flat_items, flat_scores, flat_interest = flat_items[ok], flat_scores[ok], flat_interest[ok]
    order = np.lexsort((flat_interest, -flat_scores))  # best score first; ties -> lower interest
    flat_items, flat_scores, flat_interest = flat_items[order], flat_scores[order], flat_interest[order]
    _, first = np.unique(flat_items, return_index=True)
    first.sort()
    return flat_items[first], flat_scores[first], flat_interest[first]


@register("merge")
def merge(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """ComiRec evaluation default: K·M candidates merged by score, de-duplicated, cut to n."""
    it, sc, inter = candidate_pool(scores, items, ctx.exclude)
    return [Recommendation(int(i), float(s), int(k)) for i, s, k in zip(it[: ctx.n], sc[: ctx.n], inter[: ctx.n])]
