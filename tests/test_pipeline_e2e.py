"""End to end with kfp's local runner on a tiny configuration (small synthetic data, 1 epoch), ~2-3 minutes:

1. a run with a broken candidate config fails at the training step, loudly, naming the task;
2. re-running with the fixed inputs -- from the *compiled YAML* (pipelines/compiled/training_pipeline.yaml,
   kept equal to the Python pipeline by test_pipeline.py) -- completes into a fresh run directory;
3. every artifact exists, and the gate rejects the deliberately bad candidate B (a MIND whose routing starts
   from zero logits: its K interests are identical = collapsed) while A ships: MAR, reference, Helm values; the
   single-interest baseline is evaluated on the candidates' split (the champion/challenger rule itself is off in
   TINY_PARAMS: every baseline beats a 1-epoch model); the rule on the run's artifacts with an empty store decides
   on the baselines alone and says so; gated against the release the run published (A is the champion then),
   A is refused: it does not beat itself;
4. a step re-run over its previous output overwrites it cleanly (idempotent);
5. the run publishes its release to a real local S3-compatible server (moto's server: a STAND-IN FOR S3,
   tests/servers.py), and a chart-like start -- the rendered chart's own commands and config files (the fetcher
   init container, TorchServe through the image's entrypoint, the API, the monitoring CronJob's fetcher and
   `mirec monitor`), paths and ports remapped to a temp dir -- serves and monitors that release from its URI alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirec import steps  # noqa: E402
from mirec.cli.pipeline import TINY_PARAMS, run_main  # noqa: E402
from servers import S3Server  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GOOD = {**TINY_PARAMS, "candidate_a": {"name": "mind", "dim": 16},
        # deliberately bad: zero initial routing logits -> identical capsules (DESIGN.md) -> collapse
        "candidate_b": {"name": "mind", "dim": 16, "routing_sigma": 0.0}}


BUCKET = "mirec-releases"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 stand-in (moto's server) with the release bucket; credentials in the environment, as the pipeline's
    `mirec-object-store` Secret puts them into the deploy task (kfp's local runner passes the environment on)."""
    if S3Server.available():
        yield None  # the release goes to a file:// store instead; the S3-only test skips
        return
    with S3Server.with_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as srv:
        yield srv


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3):
    from pipelines.local import run_local

    root = tmp_path_factory.mktemp("pipeline_root")
    bad = {**GOOD, "use_feast": False, "candidate_a": {"name": "no_such_model"}}
    with pytest.raises(RuntimeError) as failed:
        run_local(bad, pipeline_root=root)
    failed_dirs = [p for p in root.iterdir() if p.is_dir()]
    store = f"s3://{BUCKET}/releases" if s3 else (root.parent / "release-store").as_uri()
    res = run_main({**GOOD, "release_store": store}, pipeline_root=root,
                   compiled=REPO / "pipelines" / "compiled" / "training_pipeline.yaml", echo=lambda s: None)
    return {"root": root, "error": str(failed.value), "failed_dirs": failed_dirs, "res": res, "s3": s3,
            "store": store}


def test_failed_step_fails_loudly(runs):
    assert "train-candidate-op" in runs["error"] and "FAILURE" in runs["error"]
    assert len(runs["failed_dirs"]) == 1
    failed = runs["failed_dirs"][0]
    assert (failed / "data-ingest-op" / "dataset" / "interactions.parquet").is_file()
    assert not (failed / "gate-op").exists()  # nothing downstream of the failure ran


def test_rerun_completes_in_a_fresh_run_dir(runs):
    run_dir = Path(runs["res"]["run_dir"])
    assert run_dir not in runs["failed_dirs"] and run_dir.parent == runs["root"]
    assert (run_dir / "summary.txt").is_file()


def test_every_artifact_exists_and_gate_rejects_bad_candidate(runs):
    run = Path(runs["res"]["run_dir"])
    c = steps.collect_run(run)
    s, d = c["steps"], c["decision"]
    assert (run / "data-ingest-op" / "dataset" / "interactions.parquet").is_file()
    assert s["features_materialize"][0]["status"] == "ok"
    td = s["build_training_data"][0]
    assert td["feast"] == "ok" and td["examples"] == "feast" and td["mismatched_histories"] == 0
    assert all("examples from Feast" in r["mode"] for r in s["train_candidate"])  # training read Feast
    assert {r["candidate"] for r in s["train_candidate"]} == {"A", "B"}
    for r in s["train_candidate"]:
        assert (Path(r["path"]) / "model.pt").is_file()
    for r in s["evaluate_candidate"]:
        for f in ("metrics.json", "served.jsonl"):
            assert (Path(r["path"]) / f).is_file()
    # the kfp Metrics artifacts carry the numbers the UI shows
    ex = json.loads((run / "evaluate-candidate-op" / "executor_output.json").read_text())
    md = ex["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"recall@50", "ndcg@50", "diversity@50", "interest_cos"} <= set(md)
    # gate: B (collapsed) rejected for its collapse, A passes and wins
    assert d["winner"] == "A" and d["passed"] == ["A"] and d["rejected"] == ["B"]
    assert any(r.startswith("FAIL interest_cos") for r in d["candidates"]["B"]["reasons"])
    gate_dir = Path(c["decision_dir"])
    assert "accuracy-diversity" in (gate_dir / "report.html").read_text()
    assert (run / "gate-op" / "report_html").is_file() and (run / "gate-op" / "report_md").is_file()
    # champion/challenger: the baselines on the candidates' split; a first release (empty store): baselines alone
    base = s["evaluate_baselines"][0]
    assert base["status"] == "ok" and list(base["baselines"]) == ["single"]
    ev_a = next(r for r in s["evaluate_candidate"] if r["candidate"] == "A")
    assert base["baselines"]["single"]["split_id"] == ev_a["split_id"]
    assert d["champion_challenger"] == {"enabled": False}  # TINY_PARAMS: off (every baseline beats 1 epoch)
    # the rule on these artifacts with nothing published yet: a first release, decided on the baselines alone
    cc_d = steps.gate({r["candidate"]: r["path"] for r in s["evaluate_candidate"]}, {"champion_challenger": {}},
                      run.parent / "gate-first-release", baselines_dir=base["path"],
                      release_store=(run.parent / "empty-store").as_uri())
    cc = cc_d["champion_challenger"]
    assert cc["enabled"] and cc["first_release"] and cc["champion"] is None and cc["best_baseline"] == "single"
    ra = cc_d["candidates"]["A"]["reasons"]
    assert any(r.startswith(("PASS beats baselines", "FAIL beats baselines")) and "best baseline single" in r
               for r in ra)
    assert any(r.startswith("PASS beats champion") and "no champion deployed (first release)" in r for r in ra)
    assert "first release, decided on the baselines rule alone" in (
        run.parent / "gate-first-release" / "report.md").read_text()
    # MARs: A packaged (as its own Model artifact too), B not
    pkg = s["package_candidates"]
    main = next(r for r in pkg if "mars" in r)
    assert list(main["mars"]) == ["A"]
    assert (Path(main["path"]) / "model-store" / "mirec_a.mar").is_file()
    assert (Path(main["path"]) / "config" / "config.properties").is_file()
    assert (run / "package-candidates-op" / "mar_a" / "mirec_a.mar").is_file()
    assert not list((run / "package-candidates-op" / "mar_b").glob("*.mar"))
    assert (run / "package-candidates-op" / "mar_b" / "REJECTED.json").is_file()
    # monitoring reference for the shipped candidate, in the serving-log format
    ref = s["build_monitoring_reference"][0]
    assert ref["status"] == "ok" and list(ref["references"]) == ["A"]
    assert (Path(ref["path"]) / "mirec_a" / "served.jsonl").is_file()
    from mirec.monitoring.reference import load_reference

    assert load_reference(Path(ref["path"]) / "mirec_a").models == ["mirec_a"]
    # deploy: Helm values with only the passing arm
    dep = s["deploy"][0]
    values = yaml.safe_load((Path(dep["path"]) / "values-release.yaml").read_text())
    assert [a["model"] for a in values["api"]["settings"]["experiment"]["arms"]] == ["mirec_a"]
    summary = runs["res"]["summary"]
    for text in ("winner: A", "gate B: REJECTED", "mirec_a.mar", "values-release.yaml", "| recall@50 |"):
        assert text in summary


def test_steps_rerun_idempotently(runs, tmp_path):
    """Re-running a step over its previous output (a retried task) overwrites it cleanly."""
    run = Path(runs["res"]["run_dir"])
    c = steps.collect_run(run)
    ev = {r["candidate"]: r["path"] for r in c["steps"]["evaluate_candidate"]}
    pkg = next(r for r in c["steps"]["package_candidates"] if "mars" in r)["path"]
    out = tmp_path / "gate"
    first = steps.gate(ev, GOOD.get("thresholds"), out)
    (out / "stale.txt").write_text("left over from a failed attempt")
    second = steps.gate(ev, GOOD.get("thresholds"), out)
    assert not (out / "stale.txt").exists()
    assert {k: v for k, v in first.items() if k != "decided"} == {k: v for k, v in second.items() if k != "decided"}
    dep1 = steps.deploy(pkg, tmp_path / "dep")
    dep2 = steps.deploy(pkg, tmp_path / "dep")
    assert dep1["arms"] == dep2["arms"]
    assert sorted(p.name for p in (tmp_path / "dep").iterdir()) == ["_step.json", "release", "values-release.yaml"]


def test_gate_against_the_champion_the_run_published(runs, tmp_path):
    """The gate step again on this run's evaluations, now that the run's release (A as mirec_a, evaluated on the
    same split) is in the store: A does not beat the deployed champion (itself) by the margin and is refused."""
    run = Path(runs["res"]["run_dir"])
    c = steps.collect_run(run)
    ev = {r["candidate"]: r["path"] for r in c["steps"]["evaluate_candidate"]}
    base = c["steps"]["evaluate_baselines"][0]["path"]
    d = steps.gate(ev, {"champion_challenger": {}}, tmp_path / "gate", baselines_dir=base,
                   release_store=runs["store"])
    cc = d["champion_challenger"]
    assert not cc["first_release"] and cc["champion"]["name"] == "mirec_a"
    assert cc["champion"]["split_id"] == c["steps"]["evaluate_candidate"][0]["split_id"]
    assert d["winner"] == "none" and "A" in d["rejected"]
    ra = d["candidates"]["A"]["reasons"]
    assert any(r.startswith("FAIL beats champion") and "champion mirec_a recall@50 =" in r for r in ra)
    assert any(r.startswith("PASS champion on the same split") for r in ra)


def test_deploy_registers_mar_with_a_real_torchserve(runs, tmp_path):
    """deploy mode 'torchserve' against a real TorchServe 0.12 (token auth on, model API enabled for this
    test server only -- the chart keeps it off and deploys through the Helm values instead)."""
    import shutil as sh

    import requests

    from mirec.serving.torchserve import TorchServeProcess

    if sh.which("java") is None:
        pytest.skip("Java is not installed (TorchServe needs it)")

    class Server(TorchServeProcess):
        def config_text(self) -> str:  # later keys win in a .properties file
            return super().config_text() + "enable_model_api=true\n"

    run = Path(runs["res"]["run_dir"])
    pkg = next(r for r in steps.collect_run(run)["steps"]["package_candidates"] if "mars" in r)["path"]
    store = tmp_path / "store"
    store.mkdir()
    with Server(store, [], tmp_path / "ts", profile="production") as ts:
        import os
        import time

        token, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:  # no models to wait for: wait for the key file + management API
            token = ts.token("management")
            try:
                if token and requests.get(f"{ts.management_url}/models", timeout=2,
                                          headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert token, "token authorization should be on"

        os.environ["TORCHSERVE_MANAGEMENT_TOKEN"] = token
        try:
            info = steps.deploy(pkg, tmp_path / "dep", mode="torchserve", torchserve_management_url=ts.management_url)
        finally:
            os.environ.pop("TORCHSERVE_MANAGEMENT_TOKEN", None)
        assert [r["model"] for r in info["registered"]] == ["mirec_a"]
        r = requests.get(f"{ts.management_url}/models/mirec_a", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        assert r.status_code == 200
        desc = r.json()[0]
        assert desc["modelVersion"] == info["models"][0]["version"]
        assert any(w["status"] == "READY" for w in desc["workers"])


# ---- 5. the release, served and monitored from its URI as the chart's containers run it ------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helm() -> str | None:
    import shutil as sh

    local = REPO / ".tools" / "bin" / "helm"
    return str(local) if local.exists() else sh.which("helm")


def _wait_http(url: str, within_s: float, headers: dict | None = None, proc=None) -> None:
    import time

    import requests

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode} while waiting for {url}")
        try:
            if requests.get(url, headers=headers or {}, timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {within_s}s")


def test_chart_like_start_serves_and_monitors_the_release_from_its_uri(runs, tmp_path):
    import os
    import shutil as sh
    import signal
    import subprocess
    import time

    import requests

    s3 = runs["s3"]
    if s3 is None:
        pytest.skip(S3Server.available())
    helm = _helm()
    if helm is None or sh.which("java") is None:
        pytest.skip("helm (scripts/get-helm-tools.sh) or Java (TorchServe) not available")
    run = Path(runs["res"]["run_dir"])
    dep = steps.collect_run(run)["steps"]["deploy"][0]
    uri = dep["release_uri"]
    assert uri.startswith(f"s3://{BUCKET}/releases/mirec/") and dep["published"]
    # the chart, as docs/cluster.md installs it: production profile + the run's release file
    rendered = subprocess.run(
        [helm, "template", "mirec", str(REPO / "charts" / "mirec"), "-n", "recsys", "--skip-tests",
         "-f", str(REPO / "charts" / "mirec" / "values-production.yaml"),
         "-f", str(Path(dep["path"]) / "values-release.yaml"),
         "--set", f"release.endpointUrl={s3.endpoint}", "--set", "api.settings.feast.enabled=false"],
        capture_output=True, text=True, check=True, env={**os.environ, "KUBECONFIG": os.devnull}).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mirec-serving")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    cms = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    pod = deploy["spec"]["template"]["spec"]
    bin_dir = Path(sys.executable).parent
    # the Secret release.credentialsSecret would give (envFrom), and the rendered env of each container
    secret_env = {k: v for k, v in s3.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base_env["PATH"] = f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}"

    def env_of(container) -> dict:
        env = {**base_env}
        if container.get("envFrom"):
            assert container["envFrom"] == [{"secretRef": {"name": "mirec-object-store"}}]
            env.update(secret_env)
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        return env

    remap = {"/home/model-server/model-store": str(tmp_path / "model-store"), "/var/run/torchserve": str(tmp_path / "ts"),
             "/var/run/mirec/release": str(tmp_path / "release"), "/var/log/mirec": str(tmp_path / "log"),
             "/var/lib/mirec/shared": str(tmp_path / "shared"), "/etc/torchserve": str(tmp_path / "etc-ts"),
             "/home/model-server/logs": str(tmp_path / "ts-logs")}

    def mapped(text: str) -> str:
        for old, new in remap.items():
            text = text.replace(old, new)
        return text

    for d in remap.values():
        Path(d).mkdir(parents=True, exist_ok=True)
    # 1. the serving pod's init container: model-store/ of the release, verified, from the URI alone
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-models")
    env = env_of(fetch)
    assert env["MIREC_RELEASE_URI"] == uri and env["AWS_ENDPOINT_URL"] == s3.endpoint
    subprocess.run([mapped(a) for a in fetch["command"]], env=env, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "model-store" / "mirec_a.mar").is_file()
    # 2. TorchServe with the rendered config.properties, through the image's entrypoint (SIGTERM -> --stop)
    ts_cfg = cms["mirec-torchserve"]
    ports = {p: _free_port() for p in (8080, 8081, 8082)}
    config, ping = ts_cfg["config.properties"], ts_cfg["ping.py"]
    for old, new in ports.items():
        config = config.replace(f":{old}\n", f":{new}\n")
        ping = ping.replace(f":{old}/", f":{new}/")
    (tmp_path / "etc-ts" / "config.properties").write_text(mapped(config))
    (tmp_path / "etc-ts" / "log4j2.xml").write_text(ts_cfg["log4j2.xml"])
    (tmp_path / "etc-ts" / "ping.py").write_text(mapped(ping))
    ts_c = next(c for c in pod["containers"] if c["name"] == "torchserve")
    assert ts_c["command"] == ["mirec-torchserve-entrypoint"]
    ts_env = {**env_of(ts_c), "TEMP": str(tmp_path / "ts-tmp"), "TMPDIR": str(tmp_path / "ts-tmp"),
              "HOME": str(tmp_path / "ts-tmp")}
    for k in ("LOG_LOCATION", "METRICS_LOCATION"):
        ts_env[k] = mapped(ts_env[k])
    (tmp_path / "ts-tmp").mkdir()
    entry = str(REPO / "serving" / "torchserve-entrypoint.sh")
    procs = []
    try:
        ts = subprocess.Popen(["sh", entry, *[mapped(a) for a in ts_c["args"]]], cwd=tmp_path / "ts", env=ts_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(ts)
        deadline = time.monotonic() + 240
        while subprocess.run([sys.executable, str(tmp_path / "etc-ts" / "ping.py"), "--ready"],
                             capture_output=True).returncode != 0:
            assert ts.poll() is None, "TorchServe exited"
            assert time.monotonic() < deadline, "TorchServe never became Healthy on the fetched release"
            time.sleep(1)
        # TorchServe's /ping is Healthy before the Python workers have loaded the model (~40 s on 2 loaded cores):
        # wait for a READY worker (management API, with the management key) as a warm pod would have
        key = json.loads((tmp_path / "ts" / "key_file.json").read_text())["management"]["key"]
        mgmt = next(ln.split("=", 1)[1] for ln in mapped(config).splitlines() if ln.startswith("management_address="))
        deadline = time.monotonic() + 300
        while True:
            # TorchServe binds its inference port before its management port: on loaded cores /ping can be Healthy
            # a moment before the management API accepts connections (seen in CI: "Connection refused")
            try:
                r = requests.get(f"{mgmt}/models/mirec_a", headers={"Authorization": f"Bearer {key}"}, timeout=10)
                seen = f"{r.status_code} {r.text[:500]}"
                if r.status_code == 200 and any(w["status"] == "READY" for w in r.json()[0]["workers"]):
                    break
            except requests.ConnectionError as exc:
                seen = f"management API not accepting connections: {exc}"
            assert ts.poll() is None, f"TorchServe exited ({seen})"
            assert time.monotonic() < deadline, f"no READY worker: {seen}"
            time.sleep(1)
        # 3. the API with the rendered api.yaml
        api_c = next(c for c in pod["containers"] if c["name"] == "api")
        settings = yaml.safe_load(cms["mirec-api"]["api.yaml"])
        settings["torchserve_url"] = f"http://127.0.0.1:{ports[8080]}"
        # production's 500 ms deadline is for a warm pod on its own cores; this machine is 2 shared cores
        settings["timeout_ms"] = 20_000
        settings = yaml.safe_load(mapped(yaml.safe_dump(settings)))
        (tmp_path / "api.yaml").write_text(yaml.safe_dump(settings))
        args = api_c["args"]
        api_port = _free_port()
        args = [str(tmp_path / "api.yaml") if a == "/etc/mirec/api.yaml" else a for a in args]
        args[args.index("--port") + 1], args[args.index("--host") + 1] = str(api_port), "127.0.0.1"
        api = subprocess.Popen([str(bin_dir / "mirec"), *args], env=env_of(api_c), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "api.log", "wb"),
                               start_new_session=True)
        procs.append(api)
        _wait_http(f"http://127.0.0.1:{api_port}/readyz", 120, proc=api)
        import pandas as pd

        ds = run / "build-training-data-op" / "training_data"
        inter = pd.read_parquet(ds / "interactions.parquet", columns=["user_id", "item_id"])
        users = inter.groupby("user_id")["item_id"].apply(lambda s: [str(x) for x in s.tolist()[-20:]])
        served = 0
        for uid, hist in list(users.items())[:260]:
            r = requests.post(f"http://127.0.0.1:{api_port}/recommend", json={"user_id": str(uid), "history": hist},
                              timeout=30)
            assert r.status_code == 200, r.text
            served += 1
        log = tmp_path / "log" / "served.jsonl"
        deadline = time.monotonic() + 30
        while sum(1 for _ in open(log)) < served and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for p in reversed(procs):  # what the kubelet does after preStop: SIGTERM to each container
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    assert ts.returncode is not None
    # 4. the monitoring CronJob: its init container fetches the release's reference, then `mirec monitor` runs
    job = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    ref_fetch = job["initContainers"][0]
    subprocess.run([mapped(a) for a in ref_fetch["command"]], env=env_of(ref_fetch), check=True, capture_output=True,
                   timeout=300)
    mon = job["containers"][0]
    args = [mapped(a) for a in mon["args"]]
    args[args.index("--log") + 1] = str(log)
    args[args.index("--since") + 1] = "24h"
    menv = env_of(mon)
    menv = {k: mapped(v) for k, v in menv.items()}
    menv["POD_NAME"] = "mirec-monitor-test"
    args = [a.replace("$(POD_NAME)", "mirec-monitor-test") for a in args]
    for flag in ("--pushgateway",):  # no Pushgateway here: the metrics still go to the --prom-file
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    out = subprocess.run([str(bin_dir / "mirec"), *args], env=menv, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-2000:]  # 0 healthy, 1 an alert fired
    assert args[args.index("--reference") + 1].startswith(str(tmp_path / "release"))
    prom = Path(args[args.index("--prom-file") + 1]).read_text()
    assert "mirec_a" in prom, prom[:1000]
