"""Training from Feast (issue 16, item 3): the trainer's examples come from the point-in-time frame of the Feast
offline store (DuckDB, the local profile), and on the synthetic data they are the prepared-dataset path's examples
exactly: same ids, lengths, histories and targets, hence the same trained weights and metrics.

Real parts: the pipeline's own steps (data_ingest -> features_materialize -> build_training_data), Feast apply +
materialize + get_historical_features on DuckDB, mirec.train on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("feast")

from mirec import steps  # noqa: E402
from mirec.data import Dataset  # noqa: E402
from mirec.examples import EXAMPLES_FILE, FrameExamples  # noqa: E402
from mirec.errors import ConfigError  # noqa: E402
from mirec.models import ModelConfig  # noqa: E402
from mirec.train import Examples, TrainConfig, train  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")
SYNTH = {"synth": {"n_users": 80, "n_items": 120, "n_categories": 5, "seq_len": [8, 30]}}


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast-train")
    steps.data_ingest(root / "ds", data_config=SYNTH)
    feat = steps.features_materialize(root / "ds", root / "feast")
    assert feat["status"] == "ok", feat
    info = steps.build_training_data(root / "ds", root / "feast", root / "td", max_labels=10_000)
    return root / "td", info


def test_build_training_data_writes_every_example_from_feast(training_data):
    td, info = training_data
    ds = Dataset(td)
    n_examples = sum(len(s) - 1 for s in ds.train_sequences().values() if len(s) >= 2)
    assert info["examples"] == "feast" and info["labels"] == n_examples and (td / EXAMPLES_FILE).is_file()
    assert info["mismatched_histories"] == 0 and info["checked"] == n_examples  # every row checked here
    assert info["same_second_events"] == 0  # the synthetic data orders every user's events strictly


def test_feast_examples_equal_the_prepared_dataset_examples(training_data):
    td, _ = training_data
    ds = Dataset(td)
    max_len = ModelConfig(name="mind").max_len
    ref = Examples(ds.train_sequences(), max_len)
    got = FrameExamples.read(td / EXAMPLES_FILE, max_len, seq_len=json.loads((td / "_step.json").read_text())["seq_len"])
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got.sid, ref.sid)
    np.testing.assert_array_equal(got.length, ref.length)
    np.testing.assert_array_equal(got.target_freq, ref.target_freq)
    ids = np.arange(len(ref))
    for a, b in zip(got.collate(ids), ref.collate(ids)):
        assert torch_equal(a, b)
    assert got.repeat_rate() == pytest.approx(ref.repeat_rate(), abs=0.02)  # both sampled, same examples


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_training_on_feast_examples_gives_the_same_model(training_data, tmp_path):
    td, _ = training_data
    mcfg = ModelConfig(name="mind", dim=8, K=2)
    tcfg = TrainConfig(epochs=1, batch_size=64, num_negatives=16, seed=3)
    a = train(td, mcfg, tcfg, tmp_path / "dataset", progress=False)
    b = train(td, mcfg, tcfg, tmp_path / "feast", progress=False,
              examples=FrameExamples.read(td / EXAMPLES_FILE, mcfg.max_len))
    keys = [k for k in a.metrics if isinstance(a.metrics[k], float) and "seconds" not in k and "time" not in k
            and not k.endswith("_s")]
    assert keys
    for k in keys:
        assert b.metrics[k] == pytest.approx(a.metrics[k], rel=1e-6, abs=1e-9), k
    import torch

    wa = torch.load(tmp_path / "dataset" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "feast" / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_candidate_step_trains_on_the_feast_examples(training_data, tmp_path):
    td, _ = training_data
    info = steps.train_candidate(td, tmp_path / "m", "A", {"name": "mind", "dim": 8, "K": 2},
                                 {"batch_size": 64, "num_negatives": 16}, epochs=1)
    assert info["mode"] == "in-process, examples from Feast"


def test_feature_store_keeping_fewer_items_than_the_model_uses_is_refused(training_data):
    td, _ = training_data
    with pytest.raises(ConfigError, match="seq_len"):
        FrameExamples.read(td / EXAMPLES_FILE, max_len=50, seq_len=20)
