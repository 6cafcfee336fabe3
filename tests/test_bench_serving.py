"""benchmarks/serving.py's model choice (no servers): `--model gemirec` serves GemiRec in its joint stage with its
dictionary initialised, and its rows never replace ComiRec-SA's rows of the same configuration when results merge."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serving.py"


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location("mirec_bench_serving", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gemirec_is_served_in_its_last_stage_with_codes(sb):
    import torch

    from mirec.models import pad_histories

    model, cfg, items = sb.synth(2000, model_name="gemirec")
    assert model.stage == "joint" and bool(model.dict_ready) and not model.training
    assert cfg.options["codebook_sizes"] == model.sizes  # the derived "auto" sizes travel with the config
    seq, mask = pad_histories([np.arange(5), np.arange(30, 70)], cfg.max_len)
    with torch.no_grad():
        v = model.serving_interests(seq, mask)
    assert v.shape == (2, sb.K, sb.DIM) and model.codes is not None and model.codes.shape == (2, sb.K)
    assert len(items) == 2000


def test_rows_of_two_models_are_two_configurations(sb):
    row = {"items": 10_000, "index": "flat", "embeddings": "iid", "concurrency": 1, "path": "inproc",
           "p50_ms": 1.0, "p99_ms": 2.0, "throughput_rps": 100.0}
    old = dict(row)  # a row written before --model existed = comirec_sa
    gem = {**row, "model": "gemirec", "p50_ms": 3.0}
    nocache = {**gem, "model_options": {"cache_size": 0}}
    assert len({sb._key(old), sb._key(gem), sb._key(nocache)}) == 3
    assert sb._key(old) == sb._key({**row, "model": "comirec_sa"})
    ts = {**gem, "path": "torchserve", "p50_ms": 6.0, "p99_ms": 8.0, "throughput_rps": 50.0}
    rat = sb.ratios([old, gem, ts])
    assert len(rat) == 1 and rat[0]["model"] == "gemirec" and rat[0]["p50_ratio"] == 2.0  # against gemirec's own


def test_other_models_need_random_init(sb, tmp_path):
    with pytest.raises(SystemExit, match="iid only"):
        sb.Case(1000, "trained", tmp_path, model_name="gemirec")
