"""Monitoring driven by the real serving code: the recommendation API (`mirec.serving.api.create_app`, A/B
assignment, ServedLog writer) in front of `RecommendService` (the TorchServe handler's code), with the
TorchServe HTTP hop replaced by an in-process stand-in (`InProcessTorchServe`). Arm B's model is then collapsed (all K
interests equal) and the monitor must flag B, not A."""

from __future__ import annotations

import numpy as np
import pytest
from mirec.serving.testing import InProcessTorchServe

pytest.importorskip("fastapi")


def _traffic(app, users: int, seed: int) -> None:
    from fastapi.testclient import TestClient

    from mirec.serving.testing import N_CATS, N_ITEMS

    rng = np.random.default_rng(seed)
    with TestClient(app) as c:
        for u in range(users):
            cats = rng.choice(N_CATS, size=int(rng.integers(1, 4)), replace=False)
            length = int(rng.integers(5, 20))
            items = [int(rng.choice(cats)) + N_CATS * int(rng.integers(0, N_ITEMS // N_CATS)) for _ in range(length)]
            r = c.post("/recommend", json={"user_id": f"s{seed}-u{u}", "history": [f"item-{i}" for i in items], "n": 10})
            assert r.status_code == 200, r.text


@pytest.mark.slow
def test_collapsed_arm_flagged_through_the_serving_api(tmp_path):
    from mirec.data.schema import IdMap
    from mirec.monitoring import Thresholds, build_reference, run_monitor
    from mirec.monitoring.logs import read_jsonl
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings, Arm, Experiment
    from mirec.serving.testing import items_frame, tiny_model

    items = items_frame()

    def service(name, collapsed=False):
        model, _ = tiny_model()
        if collapsed:  # every interest = the first one
            orig = model.interests
            model.interests = lambda seq, mask: orig(seq, mask)[:, :1].expand(-1, model.cfg.K, -1).contiguous()
        rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy())
        return RecommendService(rec, IdMap(items["item_id"].to_numpy()), items["category"].to_numpy(), name, "1.0")

    def app(log, services):
        settings = ApiSettings(torchserve_url="http://ts", log_path=str(log), experiment=Experiment(
            salt="mon", arms=[Arm(name="A", model="mirec_a"), Arm(name="B", model="mirec_b")]))
        return create_app(settings, upstream=InProcessTorchServe(services))

    healthy = {"mirec_a": service("mirec_a"), "mirec_b": service("mirec_b")}
    _traffic(app(tmp_path / "ref.jsonl", healthy), 200, seed=1)
    build_reference(read_jsonl(tmp_path / "ref.jsonl"), tmp_path / "ref", items[["item_idx", "item_id", "category"]])

    _traffic(app(tmp_path / "live" / "served.jsonl", {**healthy, "mirec_b": service("mirec_b", collapsed=True)}),
             160, seed=2)
    # A random-init tiny model already has near-parallel interests (mean cos ~0.98, also in the reference):
    # the absolute cos rail (0.9) rightly flags it, so switch it off here and test the relative rules.
    th = Thresholds(min_requests=50, interest_collapse={"max_mean_pairwise_cos": 1.0})
    res = run_monitor(tmp_path / "ref", tmp_path / "live" / "*.jsonl", since="1h", out=tmp_path / "out",
                      thresholds=th, html=False)
    by = {g["arm"]: g for g in res.groups}
    assert set(by) == {"A", "B"} and by["A"]["reference_model"] == "mirec_a"
    assert by["B"]["checks"]["interest_collapse"]["firing"], by["B"]["checks"]["interest_collapse"]
    assert not by["A"]["checks"]["interest_collapse"]["firing"]
    assert by["B"]["values"]["mean_pairwise_cos"] > 0.99 and by["B"]["values"]["dead_interests"] == 3
    assert res.exit_code == 1


@pytest.mark.slow
def test_popular_histories_flagged_through_the_serving_api(tmp_path):
    """The handler writes `history_popularity` into every served line, so the monitor's "more popular histories"
    input-drift test runs on production logs (not only on simulated ones): histories whose items are 60%
    replaced by the catalogue's head fire `input_drift`; the same traffic without the replacement does not."""
    from mirec.data.schema import IdMap
    from mirec.metrics import head_mask
    from mirec.monitoring import Thresholds, build_reference, run_monitor
    from mirec.monitoring.logs import read_jsonl
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings, Arm, Experiment
    from mirec.serving.testing import N_ITEMS, items_frame, tiny_model

    items = items_frame()
    model, _ = tiny_model()
    rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy())
    svc = RecommendService(rec, IdMap(items["item_id"].to_numpy()), items["category"].to_numpy(), "mirec_a", "1.0")
    head = np.flatnonzero(head_mask(items["popularity"].to_numpy()))

    def traffic(log, users, seed, popular_share):
        from fastapi.testclient import TestClient

        settings = ApiSettings(torchserve_url="http://ts", log_path=str(log),
                               experiment=Experiment(salt="pop", arms=[Arm(name="A", model="mirec_a")]))
        rng = np.random.default_rng(seed)
        with TestClient(create_app(settings, upstream=InProcessTorchServe({"mirec_a": svc}))) as c:
            for u in range(users):
                hist = rng.integers(0, N_ITEMS, size=int(rng.integers(5, 20)))
                swap = rng.random(len(hist)) < popular_share
                hist[swap] = rng.choice(head, size=int(swap.sum()))
                r = c.post("/recommend", json={"user_id": f"s{seed}-u{u}", "history": [f"item-{i}" for i in hist],
                                               "n": 10})
                assert r.status_code == 200, r.text

    traffic(tmp_path / "ref.jsonl", 300, seed=1, popular_share=0.0)
    lines = read_jsonl(tmp_path / "ref.jsonl")
    assert all(set(x["history_popularity"]) == {"head_share", "mean_log_pop"} for x in lines)
    build_reference(lines, tmp_path / "ref", items[["item_idx", "item_id", "category"]])
    th = Thresholds(min_requests=50, interest_collapse={"max_mean_pairwise_cos": 1.0})
    for name, share, fires in (("healthy", 0.0, False), ("popular", 0.6, True)):
        traffic(tmp_path / name / "served.jsonl", 200, seed=2, popular_share=share)
        res = run_monitor(tmp_path / "ref", tmp_path / name / "*.jsonl", since="1h", out=tmp_path / f"out-{name}",
                          thresholds=th, html=False)
        drift = res.groups[0]["checks"]["input_drift"]
        popularity_tests = [t for t in drift["tests"] if t["measure"].startswith(("head_share", "mean_log_pop"))]
        assert popularity_tests and "history_popularity" not in str(drift.get("skipped", "")), drift
        assert any(t["firing"] for t in popularity_tests) is fires, (name, popularity_tests)
