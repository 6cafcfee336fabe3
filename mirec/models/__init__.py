"""Models: one file each, one interface (`interests(item_seq, mask) -> [B, K, d]`), a registry by name.

    from mirec.models import ModelConfig, build
    model = build(ModelConfig(name="mind", n_items=N, K=4))
"""

from mirec.models import comirec_dr, comirec_sa, gemirec, hmisr, mind, sasrec, single  # noqa: F401  (registration)
from mirec.models.base import (ModelConfig, MultiInterestModel, available_models, build, pad_histories, register_model,
                               squash)
from mirec.models.baselines import BASELINES, Baseline, ItemKNN, Popularity, fit_baseline

__all__ = ["BASELINES", "Baseline", "ItemKNN", "ModelConfig", "MultiInterestModel", "Popularity",
           "available_models", "build", "fit_baseline", "pad_histories", "register_model", "squash"]
