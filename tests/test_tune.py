"""`mirec tune`: search space <-> Optuna, the study (resume from SQLite, pruning, outputs), the headline check that a
small study beats a deliberately bad starting config, best_config.yaml through `mirec train --config`, the Katib
Experiment (typed SDK models, trial command, StdOut metric lines), the CLI and the pipeline step."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import requires_shared, shared_path
from mirec.config import DataConfig, SynthConfig
from mirec.data import prepare
from mirec.errors import ConfigError
from mirec.models import ModelConfig
from mirec.train import TrainConfig, train
from mirec.tune import (BEST_CONFIG, STUDY_JSON, STUDY_PLOT, SearchSpace, TuneConfig, build_katib_experiment,
                        load_base_config, make_objective, plot_study, render_katib_experiment, run_study,
                        run_trial, space_from_dict, trial_command, tune_step)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # components/ and pipelines/ are top-level packages of the checkout
    sys.path.insert(0, str(REPO))

BASE_MODEL = ModelConfig(name="mind", dim=16, K=2, max_len=20)
BASE_TRAIN = dict(epochs=3, batch_size=128, num_negatives=64, patience=3, num_threads=1)
BAD_TRAIN = TrainConfig(**BASE_TRAIN, lr=1e-5)  # deliberately bad: 3 epochs at lr 1e-5 barely move the embeddings
SPACE = space_from_dict({"params": [
    {"name": "lr", "kind": "float", "low": 1e-4, "high": 3e-2, "log": True},
    {"name": "temperature", "kind": "float", "low": 0.03, "high": 1.0, "log": True},
    {"name": "K", "section": "model", "kind": "int", "low": 1, "high": 4},
    {"name": "num_negatives", "kind": "categorical", "choices": [16, 64]},
]})
# Katib's StdOut metrics collector default filter (pkg/metricscollector/v1beta1/common: DefaultFilter)
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare(DataConfig(out_dir=str(out), synth=SynthConfig(n_users=300, n_items=600, n_categories=8, seq_len=(15, 30))),
            progress=False)
    return out


@pytest.fixture(scope="module")
def study(tiny, tmp_path_factory):
    """6 trials of <= 3 epochs from the bad base config, then a resumed call adding 2 more to the same study."""
    out = tmp_path_factory.mktemp("tune")
    cfg = TuneConfig(n_trials=6, epochs=3, seed=0, n_startup_trials=4, prune_startup_trials=2)
    first = run_study(tiny, out, cfg, SPACE, BASE_MODEL, BAD_TRAIN, progress=False)
    first_json = json.loads((out / STUDY_JSON).read_text())
    second = run_study(tiny, out, cfg.model_copy(update={"n_trials": 2}), SPACE, BASE_MODEL, BAD_TRAIN, progress=False)
    bad = train(tiny, BASE_MODEL, BAD_TRAIN, out / "bad", progress=False).metrics["best_val_recall@50"]
    return {"out": out, "first": first, "first_json": first_json, "second": second, "bad": bad}


# ---- search space -------------------------------------------------------------------------------------------------
def test_search_space_round_trips_through_yaml_and_optuna(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = SearchSpace.default()
    assert {p.name for p in space.params} >= {"temperature", "lr", "num_negatives", "K", "max_len", "dim",
                                               "weight_decay", "remi_rr_weight", "remi_hard_neg_beta"}
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(space.model_dump(mode="json")))
    assert SearchSpace.load(f) == space
    d = space.optuna_distributions()
    assert d["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["K"] == IntDistribution(1, 8) and isinstance(d["dim"], CategoricalDistribution)
    # ask a trial with those distributions -> its params set the configs' fields, section by section
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = st.ask(d)
    values = space.suggest(trial)
    assert values == trial.params and all(p.contains(values[p.name]) for p in space.params)
    m, t = space.apply(values, BASE_MODEL, TrainConfig())
    assert (m.K, m.dim, m.max_len, m.name) == (values["K"], values["dim"], values["max_len"], "mind")
    assert (t.lr, t.temperature, t.num_negatives) == (values["lr"], values["temperature"], values["num_negatives"])
    fixed = optuna.trial.FixedTrial({**values, "lr": 3e-3})
    assert space.suggest(fixed)["lr"] == 3e-3
    assert space.base_values(ModelConfig(), TrainConfig())["K"] == 4
    assert not SPACE.params[0].contains(1e-5) and SPACE.params[2].contains(3) and not SPACE.params[2].contains(2.5)


@pytest.mark.parametrize("bad, match", [
    ({"name": "lrr", "kind": "float", "low": 0.1, "high": 1}, "no tunable field 'lrr'"),
    ({"name": "lr", "kind": "float", "low": 0.1, "high": 0.01}, "low must be < high"),
    ({"name": "lr", "kind": "float", "low": 0.0, "high": 0.1, "log": True}, "log scale needs low > 0"),
    ({"name": "temperature", "kind": "float", "low": 0.0, "high": 1.0}, "not a valid TrainConfig.temperature"),
    ({"name": "K", "section": "model", "kind": "float", "low": 1, "high": 4}, "use kind int"),
    ({"name": "dim", "section": "model", "kind": "categorical"}, "non-empty `choices`"),
    ({"name": "negatives", "kind": "categorical", "choices": ["mixed", "nope"]}, "not a valid TrainConfig.negatives"),
    ({"name": "dim", "kind": "int", "low": 8, "high": 64}, "TrainConfig has no tunable field 'dim'"),
])
def test_search_space_errors_are_one_clear_line(bad, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        space_from_dict({"params": [bad]})


def test_search_space_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        SearchSpace.load(tmp_path / "nope.yaml")
    f = tmp_path / "dup.yaml"
    f.write_text("- {name: lr, kind: float, low: 0.001, high: 0.01}\n- {name: lr, kind: float, low: 0.001, high: 0.1}\n")
    with pytest.raises(ConfigError, match="listed twice"):
        SearchSpace.load(f)


# ---- the study ----------------------------------------------------------------------------------------------------
def test_small_study_beats_a_deliberately_bad_start(study):
    """The headline check: 6 trials of 3 epochs find a config far better than the bad base (lr 1e-5), measured on
    validation Recall@50 with the same epoch budget; and the best config reproduces that when trained again."""
    bad, best = study["bad"], study["first"].best_value
    assert bad < 0.3  # the base config is really bad (no better than popularity on this data)
    assert best >= 2 * bad and best - bad >= 0.1, (best, bad)  # measured: 3.9-5.5x over 4 seeds x 2 data seeds
    # the base is outside the space (lr 1e-5 < 1e-4), so it was not enqueued: every trial is a sampled config
    assert not any(t["base"] for t in study["first_json"]["trials"])


def test_best_config_yaml_loads_like_mirec_train_config(study, tiny, tmp_path):
    from typer.testing import CliRunner

    from mirec.cli import app

    out, res = study["out"], study["second"]
    text = (out / BEST_CONFIG).read_text()
    doc = yaml.safe_load(text)
    assert set(doc) == {"model", "train"} and "n_items" not in doc["model"]
    m, t = load_base_config(out / BEST_CONFIG)
    assert m.name == "mind" and m == res.model_cfg and t == res.train_cfg
    for k, v in res.best_params.items():
        assert getattr(m if k == "K" else t, k) == v
    assert t.epochs == BAD_TRAIN.epochs and t.num_threads == 1  # the base budget, not the trials' cap
    r = CliRunner().invoke(app, ["train", "--data", str(tiny), "--config", str(out / BEST_CONFIG),
                                 "--out", str(tmp_path / "m"), "--no-progress"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output[r.output.index("{"):])["best_val_recall@50"]
    assert again == pytest.approx(res.best_value, abs=0.02)  # same seed, same single thread: the same run
    assert again >= 1.5 * study["bad"]


def test_study_resumes_from_sqlite_and_writes_outputs(study):
    out, first, second = study["out"], study["first"], study["second"]
    assert (out / "study.db").is_file() and first.storage == second.storage and first.study_name == second.study_name
    doc = json.loads((out / STUDY_JSON).read_text())
    assert first.n_trials == 6 and second.n_trials == 8
    assert [t["number"] for t in doc["trials"]] == list(range(8))
    before = {t["number"]: (t["params"], t["value"]) for t in study["first_json"]["trials"]}
    assert all(before[t["number"]] == (t["params"], t["value"]) for t in doc["trials"][:6])  # kept, not redone
    assert second.best_value >= first.best_value
    for t in doc["trials"]:
        assert set(t) >= {"number", "state", "params", "value", "epochs"} and t["state"] in {"COMPLETE", "PRUNED"}
        assert 1 <= t["epochs"] <= 3 and set(t["params"]) == {p.name for p in SPACE.params}
    assert doc["best"]["value"] == second.best_value and doc["counts"]["COMPLETE"] >= 2
    png = (out / STUDY_PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{i:04d}" for i in range(8)]
    assert not list((out / "trials").glob("*/model.pt"))  # keep_checkpoints False: no weights per trial


def test_parallel_trials_share_the_sqlite_study(tiny, tmp_path):
    """n_jobs 2: two spawned worker processes (their own sampler seeds, one torch thread each on 2 cores) fill one
    study in the SQLite file."""
    cfg = TuneConfig(n_trials=2, n_jobs=2, epochs=1, seed=0, start_from_base=False)
    res = run_study(tiny, tmp_path, cfg, SPACE, BASE_MODEL, BAD_TRAIN, progress=False)
    doc = json.loads((tmp_path / STUDY_JSON).read_text())
    assert res.n_trials == 2 and res.states == {"COMPLETE": 2}
    assert doc["trials"][0]["params"] != doc["trials"][1]["params"]  # worker seeds differ
    assert (tmp_path / BEST_CONFIG).is_file()


def test_median_pruner_stops_a_weak_trial_through_on_eval(tiny, tmp_path):
    """A study whose one finished trial reached 0.99 at every epoch: the bad config's first validation is below
    that median, so the on_eval hook raises TrialPruned out of train() after epoch 1."""
    import optuna

    cfg = TuneConfig(n_trials=1, epochs=3, prune_startup_trials=1, prune_warmup_epochs=0)
    st = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    st.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "temperature": 0.1, "K": 2, "num_negatives": 64},
                                           distributions=SPACE.optuna_distributions(), value=0.99,
                                           intermediate_values={1: 0.99, 2: 0.99, 3: 0.99}))
    st.enqueue_trial({"lr": 1e-4, "temperature": 1.0, "K": 1, "num_negatives": 16})
    st.optimize(make_objective(tiny, tmp_path, cfg, SPACE, BASE_MODEL, BAD_TRAIN), n_trials=1)
    t = st.trials[-1]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert list(t.intermediate_values) == [1] and t.user_attrs["epochs"] == 1 and t.intermediate_values[1] < 0.99
    assert not (tmp_path / "trials" / "0001" / "last.pt").exists()


def test_plot_with_too_few_trials_for_importances(tmp_path):
    import optuna

    st = optuna.create_study(direction="maximize")
    plot_study(st, tmp_path / "empty.png")
    st.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions={"lr": SPACE.params[0].distribution()},
                                           value=0.3))
    plot_study(st, tmp_path / "one.png")
    assert (tmp_path / "empty.png").stat().st_size > 1000 and (tmp_path / "one.png").stat().st_size > 1000


def test_study_config_errors(tiny, tmp_path):
    with pytest.raises(ConfigError, match="n_jobs > 1"):
        run_study(tiny, tmp_path, TuneConfig(n_trials=1, n_jobs=2, storage="memory"), SPACE, BASE_MODEL, BAD_TRAIN)
    with pytest.raises(ConfigError, match="unknown model"):
        run_study(tiny, tmp_path, TuneConfig(n_trials=1), SPACE, ModelConfig(name="nope"), BAD_TRAIN)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TuneConfig(n_trials=None, timeout_s=None)


# ---- Katib --------------------------------------------------------------------------------------------------------
def _unknown_keys(data, cls, path="") -> list[str]:
    """Keys of a serialised manifest that the SDK's typed model `cls` (recursively) does not declare."""
    import kubeflow.katib.models as km
    import kubernetes.client.models as k8s

    from mirec.tune import _feasible_space_cls

    models = {"V1beta1FeasibleSpace": _feasible_space_cls()}  # the SDK model + `distribution` (Katib >= 0.18 API)
    out = []
    by_json = {v: k for k, v in cls.attribute_map.items()}
    for key, val in data.items():
        if key not in by_json:
            out.append(f"{path}.{key}")
            continue
        typ = cls.openapi_types[by_json[key]]
        inner = typ[5:-1] if typ.startswith("list[") else typ
        sub = models.get(inner) or getattr(km, inner, None) or getattr(k8s, inner, None)
        if sub is not None:
            for i, item in enumerate(val if typ.startswith("list[") else [val]):
                out += _unknown_keys(item, sub, f"{path}.{key}[{i}]")
    return out


def _katib(**kw):
    return build_katib_experiment(SearchSpace.default(), TuneConfig(n_trials=24, n_jobs=3, seed=7, epochs=8),
                                  "ghcr.io/mirec-project/mirec:0.1.0", "/mnt/mirec/data/synthetic", "team-a",
                                  base_model_cfg=BASE_MODEL, base_train_cfg=TrainConfig(**BASE_TRAIN),
                                  pvc="mirec-artifacts", **kw)


def test_katib_experiment_fields_through_the_typed_models():
    from kubeflow.katib import ApiClient, V1beta1Experiment

    exp = _katib()
    assert isinstance(exp, V1beta1Experiment) and exp.api_version == "kubeflow.org/v1beta1" and exp.kind == "Experiment"
    assert (exp.metadata.name, exp.metadata.namespace) == ("mirec-tune", "team-a")
    s = exp.spec
    assert (s.objective.type, s.objective.objective_metric_name) == ("maximize", "val_recall_at_50")
    assert {m.name: m.value for m in s.objective.metric_strategies}["val_recall_at_50"] == "max"
    assert s.algorithm.algorithm_name == "tpe"
    assert {a.name: a.value for a in s.algorithm.algorithm_settings} == {"random_state": "7"}  # hyperopt's tpe keys
    assert s.early_stopping.algorithm_name == "medianstop"
    assert {a.name for a in s.early_stopping.algorithm_settings} == {"min_trials_required", "start_step"}
    assert (s.max_trial_count, s.parallel_trial_count, s.max_failed_trial_count) == (24, 3, 6)
    assert s.metrics_collector_spec.collector.kind == "StdOut"
    params = {p.name: p for p in s.parameters}
    assert set(params) == {p.name for p in SearchSpace.default().params}
    assert params["lr"].parameter_type == "double" and params["lr"].feasible_space.distribution == "logUniform"
    assert (params["lr"].feasible_space.min, params["lr"].feasible_space.max) == ("0.0001", "0.01")
    assert params["K"].parameter_type == "int" and (params["K"].feasible_space.min, params["K"].feasible_space.max) == ("1", "8")
    assert params["dim"].parameter_type == "discrete" and params["dim"].feasible_space.list == ["16", "32", "64", "128"]
    tt = s.trial_template
    job = tt.trial_spec
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert tt.primary_container_name == c["name"] and job["kind"] == "Job" and c["image"].endswith("mirec:0.1.0")
    cmd = " ".join(c["command"])
    for tp in tt.trial_parameters:  # every trial parameter is substituted into the command
        assert tp.reference == tp.name and f"=${{trialParameters.{tp.name}}}" in cmd
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mirec-artifacts"
    # serialised by the SDK: every key is a field its typed models declare (the CRD itself checks none)
    manifest = ApiClient().sanitize_for_serialization(exp)
    assert _unknown_keys(manifest, V1beta1Experiment) == []
    assert manifest["spec"]["parameters"][1]["feasibleSpace"]["distribution"] == "logUniform"
    assert render_katib_experiment(SearchSpace.default(), TuneConfig(n_trials=24, n_jobs=3, seed=7, epochs=8),
                                   "ghcr.io/mirec-project/mirec:0.1.0", "/mnt/mirec/data/synthetic", "team-a",
                                   base_model_cfg=BASE_MODEL, base_train_cfg=TrainConfig(**BASE_TRAIN),
                                   pvc="mirec-artifacts") == manifest
    assert "earlyStopping" not in render_katib_experiment(SPACE, TuneConfig(prune=False), "img", "/d")["spec"]


def test_katib_trial_job_is_a_valid_batch_job():
    kv = pytest.importorskip("kubernetes_validate")
    job = dict(_katib(gpus=1).spec.trial_template.trial_spec)
    job["metadata"] = {"name": "trial"}  # Katib sets it
    kv.validate(job, "1.32.0", strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_katib_trial_command_runs_and_prints_stdout_metrics(tiny, tmp_path):
    """The trial command with Katib's substitution done, run through the CLI: one timestamped line per epoch that
    Katib's StdOut collector parses into val_recall_at_50 / val_ndcg_at_50."""
    from datetime import datetime

    from typer.testing import CliRunner

    from mirec.cli import app

    cmd = trial_command(SPACE, str(tiny), BASE_MODEL, TrainConfig(**BASE_TRAIN), TuneConfig(epochs=2),
                        out=str(tmp_path / "trial"))
    values = {"lr": "0.005", "temperature": "0.1", "K": "2", "num_negatives": "64"}
    args = [re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: values[m.group(1)], a) for a in cmd]
    assert args[:2] == ["mirec", "tune-trial"]
    r = CliRunner().invoke(app, args[1:])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if "val_recall_at_50=" in ln]
    assert len(lines) == 2
    for i, ln in enumerate(lines, 1):
        datetime.strptime(ln.split()[0], "%Y-%m-%dT%H:%M:%SZ")  # RFC 3339 first: what early stopping orders by
        metrics = {m.group(1): float(m.group(2)) for m in KATIB_FILTER.finditer(ln)}
        assert metrics["epoch"] == i and 0 < metrics["val_recall_at_50"] <= 1 and "val_ndcg_at_50" in metrics
    saved = json.loads((tmp_path / "trial" / "train_config.json").read_text())
    assert (saved["lr"], saved["epochs"], saved["batch_size"]) == (0.005, 2, 128)
    with pytest.raises(ConfigError, match="placeholder"):
        run_trial(tiny, tmp_path / "x", {}, ["train.lr=${trialParameters.lr}"])


@requires_shared
def test_katib_experiment_matches_the_upstream_crd():
    import jsonschema

    docs = [d for d in yaml.safe_load_all(shared_path("k8s-schemas", "crds", "katib.kubeflow.org_experiments.yaml")
                                          .read_text()) if d]
    crd = docs[0]["spec"]
    version = next(v for v in crd["versions"] if v["served"])
    manifest = render_katib_experiment(SPACE, TuneConfig(), "img", "/d")
    assert manifest["apiVersion"] == f"{crd['group']}/{version['name']}" and manifest["kind"] == crd["names"]["kind"]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.validate(manifest, schema)
    # the published CRD checks no field (hence the typed-model test above)
    assert schema.get("x-kubernetes-preserve-unknown-fields") is True and "properties" not in schema


# ---- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_help_katib_render_and_errors(tmp_path):
    from typer.testing import CliRunner

    from mirec.cli import app

    r = CliRunner().invoke(app, ["tune", "--help"])
    assert r.exit_code == 0
    for opt in ("--data", "--trials", "--timeout", "--jobs", "--storage", "--space", "--config", "--katib-out",
                "--image", "--namespace"):
        assert opt in r.output
    f = tmp_path / "exp.yaml"
    r = CliRunner().invoke(app, ["tune", "--data", "/mnt/mirec/data", "--katib-out", str(f), "--image", "reg/mirec:1",
                                 "--namespace", "ml", "--trials", "12", "--jobs", "4"])
    assert r.exit_code == 0, r.output
    exp = yaml.safe_load(f.read_text())
    assert exp["metadata"]["namespace"] == "ml" and exp["spec"]["maxTrialCount"] == 12
    assert exp["spec"]["parallelTrialCount"] == 4
    assert exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/mirec:1"
    # input errors: one `error:` line, exit 2
    exe = Path(sys.executable).with_name("mirec")
    p = subprocess.run([str(exe), "tune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                        "--trials", "1"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "not a prepared dataset" in p.stderr
    bad = tmp_path / "space.yaml"
    bad.write_text("params: [{name: lr, kind: float, low: 1, high: 0.1}]\n")
    r = CliRunner().invoke(app, ["tune", "--data", "/x", "--out", str(tmp_path / "o"), "--space", str(bad)])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError) and "low must be < high" in str(r.exception)


# ---- pipeline step ----------------------------------------------------------------------------------------------------
def test_tune_step_passes_through_when_disabled_and_tunes_when_enabled(tiny, tmp_path):
    from mirec import steps

    cand, tc = {"name": "mind", "dim": 16.0}, {"batch_size": 128.0, "num_negatives": 64.0}
    off = tune_step(tiny, tmp_path / "off", cand, tc, k_interests=2, epochs=2, tuning={"enabled": False, "trials": 10})
    assert off["status"] == "skipped" and off["model_config"] == cand and off["train_config"] == tc
    assert json.loads((tmp_path / "off" / "_step.json").read_text())["step"] == "tune_candidate"
    on = tune_step(tiny, tmp_path / "on", cand, tc, k_interests=2, epochs=2,
                   tuning={"enabled": True, "trials": 2.0, "epochs": 1.0,
                           "space": [{"name": "lr", "kind": "float", "low": 1e-3, "high": 1e-2, "log": True}]})
    assert on["status"] == "ok" and on["trials"] == 2 and (tmp_path / "on" / BEST_CONFIG).is_file()
    m, t = steps.model_and_train_configs(on["model_config"], on["train_config"], k_interests=2, epochs=2)
    assert t.lr == on["best_params"]["lr"] and (m.name, m.dim, m.K, t.batch_size) == ("mind", 16, 2, 128)
    with pytest.raises(ConfigError, match="TuningStep"):
        tune_step(tiny, tmp_path / "x", cand, tc, tuning={"enabled": True, "trails": 3})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*custom or non-Python base image.*")
def test_tune_component_in_the_kfp_local_runner(tiny, tmp_path):
    """The component as kfp's local runner executes it: its NamedTuple outputs feed the next task's inputs."""
    from kfp import dsl, local
    from kfp.dsl import Dataset

    from components.tune import tune_candidate_op
    from pipelines.local import _runner_env

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def lr_of(train_config: dict, model_config: dict) -> float:
        return float(train_config["lr"]) + 0 * float(model_config["dim"])

    @dsl.pipeline(name="tune-only")
    def pipe(data_uri: str, tuning: dict) -> float:
        data = dsl.importer(artifact_uri=data_uri, artifact_class=Dataset, reimport=False)
        t = tune_candidate_op(training_data=data.output, model_config={"name": "mind", "dim": 16},
                              train_config={"batch_size": 128, "num_negatives": 64}, k_interests=2, epochs=2,
                              tuning=tuning)
        return lr_of(train_config=t.outputs["train_config"], model_config=t.outputs["model_config"]).output

    _runner_env()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    run = pipe(data_uri=str(tiny), tuning={"enabled": True, "trials": 2, "epochs": 1,
                                           "space": [{"name": "lr", "kind": "float", "low": 2e-3, "high": 1e-2}]})
    lr = run.output
    assert 2e-3 <= lr <= 1e-2 and lr != TrainConfig().lr
    study_json = next((tmp_path / "root").glob("tune-only-*/tune-candidate-op/study/study.json"))
    assert json.loads(study_json.read_text())["best"]["params"]["lr"] == lr
