"""Retrieval: FAISS item index + aggregators (merge, controllable, personalised, adaptive_k)."""

from mirec.retrieval.aggregators import (AggregationContext, Recommendation, available, candidate_pool,
                                         get_aggregator, register)
from mirec.retrieval.index import ItemIndex



def __getattr__(name):  # lazy: the recommender imports torch and the models; the index/aggregators do not
    if name == "Recommender":
        from mirec.retrieval.recommender import Recommender
        return Recommender
    raise AttributeError(name)


__all__ = ["Recommender", "AggregationContext", "ItemIndex", "Recommendation", "available", "candidate_pool",
           "get_aggregator", "register"]
