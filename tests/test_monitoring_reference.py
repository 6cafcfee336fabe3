"""The monitoring reference is made with exactly what is served: a real MAR (`mirec package` of a checkpoint with
its d_u calibration, aggregator `auto`) loaded with the handler's own code, the API's request defaults; the
monitor refuses a reference whose serving settings differ from the served meta.json."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from mirec.config import DataConfig, SynthConfig
from mirec.data import Dataset, prepare
from mirec.errors import DataError
from mirec.models import ModelConfig, build
from mirec.monitoring import Thresholds, build_reference, load_reference, run_monitor
from mirec.monitoring.reference import check_serving, read_served_meta, reference_from_mar
from mirec.train import save_checkpoint, write_diversity_calibration


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    from mirec.serving.packaging import PackageSpec, package

    root = tmp_path_factory.mktemp("mar")
    prepare(DataConfig(out_dir=str(root / "data"), synth=SynthConfig(n_users=200, n_items=150, n_categories=5,
                                                                       seq_len=(10, 20))), progress=False)
    ds = Dataset(root / "data")
    torch.manual_seed(0)
    model = build(ModelConfig(name="comirec_sa", n_items=ds.n_items, dim=8, K=3, max_len=10))
    ckpt = save_checkpoint(model, root / "ckpt", ds.root / "items.parquet")
    write_diversity_calibration(ckpt, ds)
    spec = PackageSpec.model_validate({"out_dir": str(root / "pkg"), "candidates": [
        {"name": "mirec_a", "version": "7", "checkpoint": str(ckpt)}]})  # aggregator: auto (the default)
    package(spec, log=lambda *_: None)
    return root, ds, root / "pkg" / "model-store" / "mirec_a.mar"


def test_reference_is_served_by_the_mar_with_the_api_defaults(packaged, tmp_path):
    from mirec.serving.schema import RecommendRequest
    from mirec.serving.service import RecommendService

    root, ds, mar = packaged
    meta = read_served_meta(mar)
    assert meta["aggregator"] == "auto" and "d_u_calibration" in meta["aggregator_params"]
    records, settings = reference_from_mar(mar, ds, ts=datetime(2026, 1, 1, tzinfo=timezone.utc))
    n_users = len(ds.eval_examples("valid")) + len(ds.eval_examples("test"))
    assert len(records) == n_users  # default: every valid + test user
    assert settings["aggregator"] == "auto" and settings["n"] == 50 and settings["exclude_seen"] is True
    assert settings["diversity"] is None and "d_u_calibration" in settings["aggregator_params_keys"]
    # each record is the handler's own answer to that user's history with the request defaults
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    svc = RecommendService.load(unpacked, device="cpu")
    ex = ds.eval_examples("valid")[0]
    hist = [str(x) for x in ds.item_ids.to_external(ex.history)]
    direct = svc.answer([RecommendRequest(history=hist)])[0]
    assert [i["item_id"] for i in records[0]["items"]] == [i["item_id"] for i in direct.items]
    assert records[0]["n"] == 50 and len(records[0]["items"]) == 50
    assert not set(hist) & {i["item_id"] for i in records[0]["items"]}  # exclude_seen, as served
    assert records[0]["history_popularity"] is not None and records[0]["version"] == "7"


def test_pipeline_step_and_the_served_settings_check(packaged, tmp_path):
    from mirec import steps

    root, ds, mar = packaged
    pkg = tmp_path / "pkg"
    (pkg / "model-store").mkdir(parents=True)
    (pkg / "model-store" / "mirec_a.mar").write_bytes(mar.read_bytes())
    (pkg / "_step.json").write_text(json.dumps({"status": "ok", "mars": {"A": {
        "candidate": "A", "model_name": "mirec_a", "version": "7", "mar": "mirec_a.mar"}}}))
    info = steps.build_monitoring_reference({}, ds.root, pkg, tmp_path / "ref")
    assert info["status"] == "ok" and info["references"]["A"]["aggregator"] == "auto"
    assert info["references"]["A"]["exclude_seen"] is True and info["references"]["A"]["n"] == 50
    ref = load_reference(tmp_path / "ref")  # the per-model layout
    assert ref.models == ["mirec_a"] and check_serving(ref.serving_of("mirec_a"), read_served_meta(mar), "mirec_a") == []
    # a window of served answers: the same records, later
    records = [json.loads(x) for x in (tmp_path / "ref" / "mirec_a" / "served.jsonl").read_text().splitlines()]
    window = [{**r, "ts": "2026-01-01T00:30:00Z", "request_id": f"w{i}"} for i, r in enumerate(records)]
    th = Thresholds(min_requests=10)
    kw = dict(since="1h", until="2026-01-01T01:00:00Z", out=None, records=window, thresholds=th)
    res = run_monitor(tmp_path / "ref", None, served_meta=mar, **kw)
    assert res.settings["mirec_a"]["differences"] == [] and res.exit_code in (0, 1, 3)
    # a served model with another aggregator / calibration: refused unless told otherwise
    other = json.loads((tmp_path / "ref" / "mirec_a" / "summary.json").read_text())
    meta = read_served_meta(mar)
    bad_meta = tmp_path / "meta.json"
    bad_meta.write_text(json.dumps({**meta, "aggregator": "merge", "aggregator_params": {}}))
    with pytest.raises(DataError, match="aggregator: reference 'auto' vs served 'merge'"):
        run_monitor(tmp_path / "ref", None, served_meta=bad_meta, **kw)
    res = run_monitor(tmp_path / "ref", None, served_meta=bad_meta, allow_settings_mismatch=True, **kw)
    assert any("aggregator_params_sha256" in d for d in res.settings["mirec_a"]["differences"])
    assert other["serving"]["weights_sha256"] == meta["weights_sha256"]
    # a reference made from evaluation records carries no serving settings: refused with --served-meta
    build_reference(records, tmp_path / "evalref" / "mirec_a")
    with pytest.raises(DataError, match="records no serving settings"):
        run_monitor(tmp_path / "evalref", None, served_meta=mar, **kw)
    assert np.isfinite(res.groups[0]["values"]["ild"])
