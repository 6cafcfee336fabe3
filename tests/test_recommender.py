"""The Recommender's answer for one user must not depend on who shares the batch.

TorchServe batches concurrent requests; the diversity aggregators choose from a candidate pool,
so a pool sized by the batch's longest history once made answers batch-dependent (found when the
serving default became `auto`)."""

import numpy as np
import pytest

from mirec.data.schema import IdMap
from mirec.retrieval import available
from mirec.retrieval.recommender import Recommender
from mirec.serving.testing import items_frame, random_histories, tiny_model


@pytest.mark.parametrize("aggregator", sorted(set(available()) - {"merge"}) + ["merge"])
@pytest.mark.parametrize("model_name", ["comirec_sa", "mind"])
def test_answer_independent_of_batch(aggregator, model_name):
    items = items_frame()
    model, _ = tiny_model(model_name, seed=0)
    rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy(), aggregator=aggregator,
                      aggregator_params={"lambda": 0.5})
    ids = IdMap(items["item_id"].to_numpy())
    hists = [ids.to_index(h) for h in random_histories(16, seed=3)]
    lengths = {len(h) for h in hists}
    assert len(lengths) > 1  # histories of different lengths: the case that used to break
    for diversity in (None, 0.3):
        batch = rec.recommend(hists, n=10, diversity=diversity)
        for h, together in zip(hists, batch):
            alone = rec.recommend([h], n=10, diversity=diversity)[0]
            assert [r.item_idx for r in alone] == [r.item_idx for r in together]
            np.testing.assert_allclose([r.score for r in alone], [r.score for r in together], rtol=0, atol=1e-5)
