"""Retrieval: FAISS item index + aggregators (merge, controllable, personalised, adaptive_k)."""

from mirec.retrieval.aggregators import (AggregationContext, Recommendation, available, candidate_pool,
                                         get_aggregator, register)
from mirec.retrieval.index import ItemIndex

__all__ = ["AggregationContext", "ItemIndex", "Recommendation", "available", "candidate_pool",
           "get_aggregator", "register"]
