"""Feature store layer (Feast): derived tables, apply/materialize, point-in-time training data, online lookup.

Imports of Feast are lazy: `import mirec.features` stays cheap.
"""

# Import prometheus_client before feast: `import feast` sets PROMETHEUS_MULTIPROC_DIR, and a
# prometheus_client first imported after that switches the whole process to multiprocess mode
# (every app's counters in the process then share values).
import prometheus_client  # noqa: F401,E402

from mirec.features.config import FeaturesConfig
from mirec.features.online import FeatureStoreUnavailable, HistoryResolution, OnlineHistoryClient, resolve_history

__all__ = ["FeatureStoreUnavailable", "FeaturesConfig", "HistoryResolution", "OnlineHistoryClient", "resolve_history", "apply", "lookup", "materialize",
           "open_store", "training_frame"]


def __getattr__(name):
    if name in ("apply", "lookup", "materialize", "open_store", "training_frame"):
        from mirec.features import store

        return getattr(store, name)
    raise AttributeError(name)
