"""Hyper-parameter tuning over one declared search space: an Optuna study here, a Katib Experiment on the cluster.

    from mirec.tune import SearchSpace, TuneConfig, run_study
    res = run_study("artifacts/data/synthetic", "artifacts/tune/mind", TuneConfig(n_trials=20, epochs=8),
                    SearchSpace.default(), ModelConfig(name="mind"), TrainConfig())
    # -> best_config.yaml (`mirec train --config` takes it), study.json, study.png, study.db

Local study (`run_study`, `mirec tune`): Optuna TPE (seeded) proposes a config per trial; the trial trains it with
`mirec.train.train` for at most `TuneConfig.epochs` epochs and reports validation Recall@50 after every epoch
(`on_eval`); a MedianPruner stops trials whose value at that epoch is below the median of earlier trials. The
objective is the best validation value of the trial. The study lives in a SQLite file in the output folder
(`load_if_exists`), so running again with the same folder adds trials to the same study. n_jobs > 1 runs trials
in that many worker processes over the shared storage, each trial with cores // n_jobs torch threads.

Cluster (`render_katib_experiment`, `mirec tune --katib-out`): the same SearchSpace becomes a Katib
`kubeflow.org/v1beta1` Experiment built from the kubeflow-katib SDK's typed models: objective `val_recall_at_50`
(maximize; Katib's StdOut collector only parses metric names of [A-Za-z0-9_-], hence not `recall@50`), TPE,
median early stopping, and a batch Job per trial running `mirec tune-trial`, which trains one config and prints
`<RFC3339 time> epoch=N val_recall_at_50=X val_ndcg_at_50=Y` after every epoch.

Pipeline (`tune_step`, components/tune.py): the training pipeline's optional tuning step; with
`tuning.enabled` false it passes candidate A's configs through unchanged.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import Field, model_validator

from mirec.config import StrictModel, load_yaml_sections, validate_config
from mirec.errors import ConfigError, MirecError
from mirec.stepio import fresh_dir

BEST_CONFIG, STUDY_JSON, STUDY_PLOT, STUDY_DB, TRIALS_DIR = "best_config.yaml", "study.json", "study.png", "study.db", "trials"
#: metric names as Katib's StdOut metrics collector parses them (its default filter: ([\w|-]+)\s*=\s*number)
KATIB_METRICS = {"recall@50": "val_recall_at_50", "ndcg@50": "val_ndcg_at_50"}
TRIAL_CONTAINER = "training-container"
STEP_FILE = "_step.json"


# ---- search space ----------------------------------------------------------------------------------------------
def _config_classes() -> dict[str, type]:
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig

    return {"model": ModelConfig, "train": TrainConfig}


class ParamSpec(StrictModel):
    """One tuned field: `name` of ModelConfig (`section: model`) or TrainConfig (`section: train`).

    kind float / int: a range [low, high] (both included), `log` for a log-uniform scale, `step` for a grid;
    kind categorical: one of `choices`."""

    name: str
    section: Literal["model", "train"] = "train"
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        where = f"search space parameter {self.section}.{self.name}"
        cls = _config_classes()[self.section]
        if self.name not in cls.model_fields or self.name == "n_items":
            raise ValueError(f"{where}: {cls.__name__} has no tunable field {self.name!r}")
        ann = cls.model_fields[self.name].annotation
        if self.kind == "float" and (ann is int or ann == (int | None)):
            raise ValueError(f"{where}: {cls.__name__}.{self.name} is an integer field: use kind int")
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError(f"{where}: kind categorical needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError(f"{where}: kind categorical takes `choices` only (no low/high/log/step)")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"{where}: duplicate choices")
            values = list(self.choices)
        else:
            if self.low is None or self.high is None or self.choices is not None:
                raise ValueError(f"{where}: kind {self.kind} needs `low` and `high` (and no `choices`)")
            if not self.low < self.high:
                raise ValueError(f"{where}: low must be < high")
            if self.log and (self.low <= 0 or self.step is not None):
                raise ValueError(f"{where}: log scale needs low > 0 and no step")
            if self.kind == "int":
                if not (float(self.low).is_integer() and float(self.high).is_integer()
                        and (self.step is None or float(self.step).is_integer())):
                    raise ValueError(f"{where}: kind int needs whole low/high/step")
                self.low, self.high = int(self.low), int(self.high)
                self.step = int(self.step) if self.step is not None else None
            values = [self.low, self.high]
        for v in values:  # every end point / choice must be a value the config accepts
            try:
                cls.model_validate({self.name: v})
            except Exception as exc:  # pydantic ValidationError: say which value
                msg = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise ValueError(f"{where}: value {v!r} is not a valid {cls.__name__}.{self.name} ({msg})") from None
        return self

    # -- optuna
    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is not None:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True


class SearchSpace(StrictModel):
    """The tuned parameters. YAML: `params: [{name, section, kind, low, high, log, step, choices}, ...]`."""

    params: list[ParamSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "SearchSpace":
        names = [p.name for p in self.params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"search space: parameter(s) {dup} listed twice")
        return self

    @classmethod
    def default(cls) -> "SearchSpace":
        """τ, lr, negatives, K, max_len, dim, weight decay and the REMI weights (docs/models.md, "Tuning")."""
        p = ParamSpec
        return cls(params=[
            p(name="temperature", kind="float", low=0.02, high=1.0, log=True),
            p(name="lr", kind="float", low=1e-4, high=1e-2, log=True),
            p(name="num_negatives", kind="categorical", choices=[64, 256, 1024, 4096]),
            p(name="K", section="model", kind="int", low=1, high=8),
            p(name="max_len", section="model", kind="categorical", choices=[20, 50, 100]),
            p(name="dim", section="model", kind="categorical", choices=[16, 32, 64, 128]),
            p(name="weight_decay", kind="categorical", choices=[0.0, 1e-6, 1e-5, 1e-4]),
            p(name="remi_rr_weight", kind="categorical", choices=[0.0, 0.1, 1.0, 10.0]),
            p(name="remi_hard_neg_beta", kind="categorical", choices=[0.0, 0.5, 1.0, 2.0]),
        ])

    @classmethod
    def load(cls, path: str | Path | None) -> "SearchSpace":
        """From YAML (`params:` list, or the bare list); None -> the default space."""
        if path is None:
            return cls.default()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search space file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"search space file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if isinstance(data, list):
            data = {"params": data}
        if not isinstance(data, dict):
            raise ConfigError(f"search space file {path}: expected `params:` with a list of parameters")
        return space_from_dict(data)

    def optuna_distributions(self) -> dict:
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def base_values(self, model_cfg, train_cfg) -> dict[str, Any]:
        """The base configs' values of the tuned fields."""
        cfgs = {"model": model_cfg, "train": train_cfg}
        return {p.name: getattr(cfgs[p.section], p.name) for p in self.params}

    def apply(self, values: dict[str, Any], model_cfg, train_cfg):
        """(ModelConfig, TrainConfig) = the base configs with `values` (by parameter name) set; ConfigError when
        the combination is not a valid config."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ConfigError(f"values for parameters not in the search space: {unknown}")
        upd = {"model": {}, "train": {}}
        for k, v in values.items():
            upd[by_name[k].section][k] = v
        cls = _config_classes()
        m = validate_config(cls["model"], {**model_cfg.model_dump(), **upd["model"]})
        t = validate_config(cls["train"], {**train_cfg.model_dump(), **upd["train"]})
        return m, t


def space_from_dict(data: dict) -> SearchSpace:
    """SearchSpace from a mapping; a bad parameter is one ConfigError line naming it."""
    from pydantic import ValidationError

    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid search space{f' at {where!r}' if where else ''}: {msg}") from None


# ---- study configuration ---------------------------------------------------------------------------------------
class TuneConfig(StrictModel):
    """How the study runs. The base ModelConfig / TrainConfig (what a trial does not tune) are arguments of
    `run_study` (`mirec tune --config BASE_YAML`, the `mirec train --config` format)."""

    n_trials: int | None = Field(20, ge=1)  # trials this call adds (a resumed study keeps its earlier ones)
    timeout_s: float | None = Field(None, gt=0)  # no new trial starts after this many seconds
    n_jobs: int = Field(1, ge=1)  # parallel trials (worker processes over the shared storage)
    #: None = SQLite file <out>/study.db; a path = SQLite file there; an SQLAlchemy URL (sqlite:///..., postgresql://...)
    #: as is; "memory" = in-memory (no resume, n_jobs 1)
    storage: str | None = None
    study_name: str = "mirec"
    seed: int = Field(0, ge=0)  # TPE sampler seed (worker i of n_jobs uses seed + i)
    epochs: int = Field(10, ge=1)  # most epochs per trial (early stopping by `patience` may end it sooner)
    metric: Literal["recall@50", "ndcg@50"] = "recall@50"  # validation metric maximised
    n_startup_trials: int = Field(5, ge=1)  # TPE: random trials before the model kicks in
    prune: bool = True
    prune_startup_trials: int = Field(3, ge=0)  # MedianPruner: completed trials before any pruning
    prune_warmup_epochs: int = Field(1, ge=0)  # MedianPruner: no pruning at epochs 1..this (the first is noisy)
    start_from_base: bool = True  # a new study's first trial is the base config (when it lies in the space)
    keep_checkpoints: bool = False  # keep every trial's model.pt / last.pt under trials/ (disk!)

    @model_validator(mode="after")
    def _budget(self) -> "TuneConfig":
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give n_trials or timeout_s (or both)")
        return self


@dataclass
class TuneResult:
    out_dir: Path
    study_name: str
    storage: str  # printable (password-free) storage URL
    best_trial: int
    best_value: float
    best_params: dict
    model_cfg: Any  # ModelConfig of the best trial
    train_cfg: Any  # TrainConfig written to best_config.yaml (base epochs / threads)
    n_trials: int
    states: dict = field(default_factory=dict)  # state -> count over the whole study

    @property
    def best_config(self) -> Path:
        return self.out_dir / BEST_CONFIG


def storage_url(storage: str | None, out_dir: str | Path) -> str | None:
    """TuneConfig.storage -> an SQLAlchemy URL (None = in-memory)."""
    if storage == "memory":
        return None
    if storage is None:
        return f"sqlite:///{(Path(out_dir) / STUDY_DB).resolve()}"
    if "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).resolve()}"


def _printable_url(url: str | None) -> str:
    if url is None:
        return "memory"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say nothing that could hold a secret
        return url.split("://", 1)[0] + "://..."


def _storage(url: str | None):
    import optuna

    if url is None:
        return None
    kw: dict = {"heartbeat_interval": 30, "grace_period": 120}  # trials of a killed run end up FAIL on resume
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # parallel workers wait for the file lock
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, **kw)
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise ConfigError(f"cannot open the study storage {_printable_url(url)}: {' '.join(str(exc).split())[:300]}") from None


def _study(tune_cfg: TuneConfig, url: str | None, worker: int = 0):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead of optuna's INFO log
    sampler = optuna.samplers.TPESampler(seed=tune_cfg.seed + worker, n_startup_trials=tune_cfg.n_startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune_cfg.prune_startup_trials,
                                          n_warmup_steps=tune_cfg.prune_warmup_epochs + 1)  # steps = epochs 1, 2, ..
              if tune_cfg.prune else optuna.pruners.NopPruner())
    return optuna.create_study(storage=_storage(url), sampler=sampler, pruner=pruner, study_name=tune_cfg.study_name,
                               direction="maximize", load_if_exists=True)


# ---- one trial ------------------------------------------------------------------------------------------------
def trial_train_config(train_cfg, tune_cfg: TuneConfig, threads: int | None):
    """What a trial trains with: the base TrainConfig capped at tune_cfg.epochs, with `threads` torch threads."""
    upd: dict = {"epochs": min(train_cfg.epochs, tune_cfg.epochs) if train_cfg.epochs else tune_cfg.epochs}
    if threads and train_cfg.num_threads is None:
        upd["num_threads"] = threads
    return train_cfg.model_copy(update=upd)


def make_objective(dataset, out_dir: str | Path, tune_cfg: TuneConfig, space: SearchSpace, base_model_cfg,
                   base_train_cfg, threads: int | None = None) -> Callable:
    """The Optuna objective: train the trial's config, report the validation metric after every epoch, prune
    when the pruner says so (optuna.TrialPruned out of `train`'s on_eval hook); -> the best validation value."""
    import optuna

    from mirec.train import train

    trials_dir = Path(out_dir) / TRIALS_DIR

    def objective(trial) -> float:
        values = space.suggest(trial)
        mcfg, tcfg = space.apply(values, base_model_cfg, trial_train_config(base_train_cfg, tune_cfg, threads))
        out = trials_dir / f"{trial.number:04d}"
        seen: list[float] = []

        def on_eval(epoch: int, val: dict) -> None:
            v = val.get(tune_cfg.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return
            seen.append(float(v))
            trial.set_user_attr("epochs", epoch)
            trial.report(float(v), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {tune_cfg.metric} {v:.4f} below the median")

        t0 = time.perf_counter()
        try:
            res = train(dataset, mcfg, tcfg, out, progress=False, on_eval=on_eval)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            if not tune_cfg.keep_checkpoints:
                for f in ("model.pt", "last.pt"):
                    (out / f).unlink(missing_ok=True)
        trial.set_user_attr("epochs", int(res.metrics.get("epochs", len(seen))))
        trial.set_user_attr("best_epoch", int(res.metrics.get("best_epoch", 0)))
        if not seen:
            raise ConfigError(f"trial {trial.number}: training reported no validation {tune_cfg.metric}")
        return max(seen)

    return objective


def _report_line(metric: str) -> Callable:
    """Optuna callback: one progress line per finished trial (stderr)."""

    def cb(study, ft) -> None:
        state = ft.state.name
        val = f"{metric}={ft.value:.4f}" if ft.value is not None else (
            f"{metric}@{max(ft.intermediate_values)}={ft.intermediate_values[max(ft.intermediate_values)]:.4f}"
            if ft.intermediate_values else "")
        try:
            best = f"best #{study.best_trial.number} {study.best_value:.4f}"
        except ValueError:
            best = "no completed trial yet"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in ft.params.items())
        print(f"[tune] trial {ft.number} {state} {val} epochs={ft.user_attrs.get('epochs', '?')} "
              f"{ft.user_attrs.get('seconds', 0):.0f}s | {best} | {params}", file=sys.stderr, flush=True)

    return cb


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


_CATCH = (MirecError, ValueError, RuntimeError, FloatingPointError)  # a bad config fails its trial, not the study


def _optimize(study, objective, tune_cfg: TuneConfig, n_trials: int | None, progress: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials, timeout=tune_cfg.timeout_s, catch=_CATCH,
                   callbacks=[_report_line(tune_cfg.metric)] if progress else None)


def _worker(args: dict) -> None:
    """A parallel-trials worker process (spawned): its own sampler seed, the shared storage."""
    from mirec.data import Dataset
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig

    tune_cfg = TuneConfig.model_validate(args["tune"])
    space = SearchSpace.model_validate(args["space"])
    study = _study(tune_cfg, args["url"], worker=args["worker"])
    objective = make_objective(Dataset(args["dataset"]), args["out"], tune_cfg, space,
                               ModelConfig.model_validate(args["model"]), TrainConfig.model_validate(args["train"]),
                               threads=args["threads"])
    _optimize(study, objective, tune_cfg, args["n_trials"], args["progress"])


def _split(n: int | None, k: int) -> list[int | None]:
    if n is None:
        return [None] * k
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# ---- the study ------------------------------------------------------------------------------------------------
def run_study(dataset, out_dir: str | Path, tune_cfg: TuneConfig | None = None, space: SearchSpace | None = None,
              base_model_cfg=None, base_train_cfg=None, progress: bool = True) -> TuneResult:
    """Run (or resume) the study; write best_config.yaml, study.json and study.png into out_dir.

    dataset: a prepared dataset directory (or a loaded mirec.data.Dataset, for n_jobs 1). n_trials more trials
    are added to the study of that name in the storage; the best over all its completed trials is written."""
    from mirec.data import Dataset
    from mirec.models import ModelConfig, available_models
    from mirec.train import TrainConfig

    tune_cfg = tune_cfg or TuneConfig()
    space = space or SearchSpace.default()
    base_m = base_model_cfg or ModelConfig()
    base_t = base_train_cfg or TrainConfig()
    if base_m.name not in available_models():
        raise ConfigError(f"unknown model {base_m.name!r}; known: {available_models()}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(tune_cfg.storage, out)
    if tune_cfg.n_jobs > 1:
        if url is None:
            raise ConfigError("parallel trials (n_jobs > 1) need a storage the worker processes share "
                              "(the default SQLite file, a path or a database URL), not 'memory'")
        if isinstance(dataset, Dataset):
            raise ConfigError("parallel trials (n_jobs > 1) need the dataset as a directory path")
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)  # fails early (DataError) on a bad folder
    study = _study(tune_cfg, url)
    earlier = len(study.trials)
    base_vals = space.base_values(base_m, base_t)
    from_base = tune_cfg.start_from_base and not earlier and all(p.contains(base_vals[p.name]) for p in space.params)
    if from_base:
        study.enqueue_trial(base_vals, user_attrs={"base": True})
    if progress:
        print(f"[tune] study {tune_cfg.study_name!r} in {_printable_url(url)}: {earlier} earlier trials, adding "
              f"{tune_cfg.n_trials or 'as many as fit in the timeout'}{' (the first: the base config)' if from_base else ''}"
              f" ({tune_cfg.n_jobs} at a time, ≤ {tune_cfg.epochs} epochs each)", file=sys.stderr, flush=True)
    if tune_cfg.n_jobs == 1:
        _optimize(study, make_objective(ds, out, tune_cfg, space, base_m, base_t), tune_cfg, tune_cfg.n_trials,
                  progress)
    else:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // tune_cfg.n_jobs)
        ctx = mp.get_context("spawn")  # no fork of a process that may hold torch/OpenMP threads
        procs = []
        for i, n in enumerate(_split(tune_cfg.n_trials, tune_cfg.n_jobs)):
            if n == 0:
                continue
            args = {"tune": tune_cfg.model_dump(), "space": space.model_dump(), "url": url, "worker": i,
                    "dataset": str(ds.root), "out": str(out), "model": base_m.model_dump(),
                    "train": base_t.model_dump(), "threads": threads, "n_trials": n, "progress": progress}
            p = ctx.Process(target=_worker, args=(args,), name=f"mirec-tune-{i}")
            p.start()
            procs.append(p)
        for p in procs:
            p.join()
        bad = [p.name for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"tuning worker(s) {bad} exited with an error (see their output above)")
        study = _study(tune_cfg, url)
    return _finish(study, out, tune_cfg, space, base_m, base_t, url)


def _finish(study, out: Path, tune_cfg: TuneConfig, space: SearchSpace, base_m, base_t, url) -> TuneResult:
    import optuna

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    write_study_json(study, out / STUDY_JSON, tune_cfg, space, base_m, base_t, url)
    plot_study(study, out / STUDY_PLOT, tune_cfg.metric)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        fails = [t.system_attrs.get("fail_reason", "") for t in trials if t.state == optuna.trial.TrialState.FAIL]
        raise ConfigError(f"no trial of study {tune_cfg.study_name!r} completed ({states}); "
                          f"first failure: {fails[0][:300] if fails else 'none'}")
    best = study.best_trial
    m, t = space.apply(best.params, base_m, base_t)  # base epochs / threads: the final training's own budget
    write_best_config(out / BEST_CONFIG, m, t, header=(
        f"mirec tune: best of study '{tune_cfg.study_name}' ({len(done)} completed of {len(trials)} trials): "
        f"trial #{best.number}, validation {tune_cfg.metric} = {best.value:.4f} within "
        f"{best.user_attrs.get('epochs', '?')} epochs (trials ran <= {tune_cfg.epochs})"))
    return TuneResult(out, tune_cfg.study_name, _printable_url(url), best.number, float(best.value), dict(best.params),
                      m, t, len(trials), states)


def write_best_config(path: str | Path, model_cfg, train_cfg, header: str = "") -> Path:
    """The `mirec train --config` format: `model:` (ModelConfig without n_items, which train fills in) and
    `train:` (TrainConfig) sections, every field written out."""
    m = model_cfg.model_dump(mode="json", exclude={"n_items"})
    t = train_cfg.model_dump(mode="json")
    text = "".join(f"# {ln}\n" for ln in header.splitlines()) if header else ""
    text += "# train with: mirec train --data DATA --config best_config.yaml --out OUT\n"
    text += yaml.safe_dump({"model": m, "train": t}, sort_keys=False)
    Path(path).write_text(text)
    return Path(path)


def load_base_config(path: str | Path | None, model: str | None = None):
    """(ModelConfig, TrainConfig) from a `mirec train --config` YAML (`model:` / `train:` sections), read the way
    `mirec train` reads it: `model` (when given) overrides the file's model.name; neither: mind."""
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig

    raw = load_yaml_sections(path, ("model", "train")) if path is not None else {}
    return (validate_config(ModelConfig, raw.get("model") or {}, name=model),
            validate_config(TrainConfig, raw.get("train") or {}))


# ---- outputs --------------------------------------------------------------------------------------------------
def study_record(study) -> list[dict]:
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                    "value": t.value, "epochs": t.user_attrs.get("epochs"),
                    "best_epoch": t.user_attrs.get("best_epoch"), "seconds": t.user_attrs.get("seconds"),
                    "base": bool(t.user_attrs.get("base", False)),
                    "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                    "fail_reason": t.system_attrs.get("fail_reason")})
    return out


def write_study_json(study, path: Path, tune_cfg: TuneConfig, space: SearchSpace, base_m, base_t, url) -> Path:
    trials = study_record(study)
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(done, key=lambda t: t["value"]) if done else None
    doc = {"study_name": tune_cfg.study_name, "storage": _printable_url(url), "direction": "maximize",
           "metric": f"valid {tune_cfg.metric}", "epochs_per_trial": tune_cfg.epochs,
           "best": ({"number": best["number"], "value": best["value"], "params": best["params"]} if best else None),
           "counts": {s: sum(t["state"] == s for t in trials) for s in sorted({t["state"] for t in trials})},
           "space": space.model_dump(mode="json"), "base": {"model": base_m.model_dump(mode="json", exclude={"n_items"}),
                                                            "train": base_t.model_dump(mode="json")},
           "trials": trials}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def plot_study(study, path: Path, metric: str = "recall@50") -> Path:
    """Optimisation history (completed trials, running best, pruned trials at their last reported value) and
    parameter importances (Optuna's default evaluator; needs >= 2 completed trials with different values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    if done:
        xs, ys = [t.number for t in done], [t.value for t in done]
        ax[0].scatter(xs, ys, color="C0", label="completed", zorder=3)
        run, best = [], -math.inf
        for y in ys:
            best = max(best, y)
            run.append(best)
        ax[0].step(xs, run, where="post", color="C1", label="best so far")
    if pruned:
        ax[0].scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                      marker="x", color="grey", label="pruned (last value)", zorder=2)
    ax[0].set_xlabel("trial"), ax[0].set_ylabel(f"valid {metric}")
    ax[0].set_title("optimisation history")
    if done or pruned:
        ax[0].legend(loc="lower right", fontsize=8)
    imp, why = {}, ""
    if len(done) >= 2 and len({t.value for t in done}) > 1:
        try:
            imp = optuna.importance.get_param_importances(study)
        except Exception as exc:  # e.g. a parameter with one value in every completed trial
            why = f"importances unavailable: {type(exc).__name__}"
    else:
        why = f"importances need >= 2 completed trials\nwith different values ({len(done)} completed)"
    if imp:
        names = list(imp)[::-1]
        ax[1].barh(names, [imp[n] for n in names], color="C2")
        ax[1].set_xlabel("importance (normalised)")
    else:
        ax[1].text(0.5, 0.5, why, ha="center", va="center", transform=ax[1].transAxes)
        ax[1].set_xticks([]), ax[1].set_yticks([])
    ax[1].set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- Katib -------------------------------------------------------------------------------------------------------
def _feasible_space_cls():
    """The SDK's V1beta1FeasibleSpace with `distribution` (logUniform, ...), a field of the Experiment API since Katib
    0.18 that the kubeflow-katib 0.14 models predate (newer SDKs pin protobuf < 5, which kfp's protobuf 6 rules out)."""
    from kubeflow.katib import V1beta1FeasibleSpace

    if "distribution" in V1beta1FeasibleSpace.openapi_types:
        return V1beta1FeasibleSpace

    class FeasibleSpace(V1beta1FeasibleSpace):
        openapi_types = {**V1beta1FeasibleSpace.openapi_types, "distribution": "str"}
        attribute_map = {**V1beta1FeasibleSpace.attribute_map, "distribution": "distribution"}

        def __init__(self, distribution=None, **kw):
            super().__init__(**kw)
            self.distribution = distribution

    return FeasibleSpace


def _katib_num(v) -> str:
    return str(int(v)) if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1) else repr(float(v))


def katib_parameters(space: SearchSpace) -> list:
    """SearchSpace -> Katib V1beta1ParameterSpec list: float -> double, int -> int (min/max/step, logUniform when
    log), categorical -> discrete (all numeric) or categorical (list of strings)."""
    from kubeflow.katib import V1beta1ParameterSpec

    FS = _feasible_space_cls()
    out = []
    for p in space.params:
        if p.kind == "categorical":
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)
            fs = FS(list=[_katib_num(c) if numeric else str(c).lower() if isinstance(c, bool) else str(c)
                          for c in p.choices])
            ptype = "discrete" if numeric else "categorical"
        else:
            kw = {"min": _katib_num(p.low), "max": _katib_num(p.high)}
            if p.step is not None:
                kw["step"] = _katib_num(p.step)
            if p.log:
                kw["distribution"] = "logUniform"
            fs = FS(**kw)
            ptype = "double" if p.kind == "float" else "int"
        out.append(V1beta1ParameterSpec(name=p.name, parameter_type=ptype, feasible_space=fs))
    return out


def trial_command(space: SearchSpace, data: str, base_model_cfg, base_train_cfg, tune_cfg: TuneConfig,
                  out: str = "/tmp/mirec-trial") -> list[str]:
    """The trial container's command: `mirec tune-trial` with the base configs (non-default fields, JSON) and one
    `--set section.name=${trialParameters.name}` per tuned parameter."""
    base = {"model": base_model_cfg.model_dump(mode="json", exclude_defaults=True, exclude={"n_items"}),
            "train": trial_train_config(base_train_cfg, tune_cfg, None).model_dump(mode="json", exclude_defaults=True)}
    base["model"]["name"] = base_model_cfg.name
    cmd = ["mirec", "tune-trial", "--data", data, "--out", out, "--base", json.dumps(base, separators=(",", ":"), sort_keys=True)]
    for p in space.params:
        cmd += ["--set", f"{p.section}.{p.name}=${{trialParameters.{p.name}}}"]
    return cmd


def build_katib_experiment(space: SearchSpace, tune_cfg: TuneConfig, image: str, data: str,
                           namespace: str = "kubeflow", name: str = "mirec-tune", base_model_cfg=None,
                           base_train_cfg=None, pvc: str | None = None, mount_path: str = "/mnt/mirec",
                           cpu: str = "4", memory: str = "8Gi", gpus: int = 0, max_failed_trials: int | None = None,
                           node_selector: dict | None = None, tolerations: list | None = None):
    """The Katib Experiment (kubeflow-katib SDK typed models) for the same search space as the local study.

    data: the prepared dataset directory as the trial pods see it (e.g. on the PVC `pvc`, mounted at mount_path).
    maxTrialCount = n_trials (20 when the local config runs on a timeout only), parallelTrialCount = n_jobs."""
    from kubernetes.client import V1ObjectMeta
    from kubeflow.katib import (V1beta1AlgorithmSetting, V1beta1AlgorithmSpec, V1beta1EarlyStoppingSetting,
                                V1beta1EarlyStoppingSpec, V1beta1Experiment, V1beta1ExperimentSpec,
                                V1beta1MetricsCollectorSpec, V1beta1CollectorSpec, V1beta1MetricStrategy,
                                V1beta1ObjectiveSpec, V1beta1TrialParameterSpec, V1beta1TrialTemplate)

    from mirec.models import ModelConfig
    from mirec.train import TrainConfig

    base_m, base_t = base_model_cfg or ModelConfig(), base_train_cfg or TrainConfig()
    objective_metric = KATIB_METRICS[tune_cfg.metric]
    other = [m for k, m in KATIB_METRICS.items() if k != tune_cfg.metric]
    container: dict = {"name": TRIAL_CONTAINER, "image": image,
                       "command": trial_command(space, data, base_m, base_t, tune_cfg),
                       "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}}
    if gpus:
        container["resources"]["limits"]["nvidia.com/gpu"] = gpus
    pod: dict = {"restartPolicy": "Never", "containers": [container]}
    if pvc:
        container["volumeMounts"] = [{"name": "mirec-data", "mountPath": mount_path}]
        pod["volumes"] = [{"name": "mirec-data", "persistentVolumeClaim": {"claimName": pvc}}]
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = list(tolerations)
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "spec": {"backoffLimit": 0,
                    "template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod}}}
    n_trials = tune_cfg.n_trials or 20
    spec = V1beta1ExperimentSpec(
        objective=V1beta1ObjectiveSpec(type="maximize", objective_metric_name=objective_metric,
                                       additional_metric_names=other,
                                       metric_strategies=[V1beta1MetricStrategy(name=m, value="max")
                                                          for m in [objective_metric, *other]]),
        algorithm=V1beta1AlgorithmSpec(algorithm_name="tpe", algorithm_settings=[
            V1beta1AlgorithmSetting(name="random_state", value=str(tune_cfg.seed))]),
        early_stopping=(V1beta1EarlyStoppingSpec(algorithm_name="medianstop", algorithm_settings=[
            V1beta1EarlyStoppingSetting(name="min_trials_required", value=str(max(1, tune_cfg.prune_startup_trials))),
            V1beta1EarlyStoppingSetting(name="start_step", value=str(tune_cfg.prune_warmup_epochs + 1))])
            if tune_cfg.prune else None),
        metrics_collector_spec=V1beta1MetricsCollectorSpec(collector=V1beta1CollectorSpec(kind="StdOut")),
        max_trial_count=n_trials, parallel_trial_count=tune_cfg.n_jobs,
        max_failed_trial_count=max_failed_trials if max_failed_trials is not None else max(1, n_trials // 4),
        parameters=katib_parameters(space),
        trial_template=V1beta1TrialTemplate(
            primary_container_name=TRIAL_CONTAINER, retain=False,
            trial_parameters=[V1beta1TrialParameterSpec(name=p.name, reference=p.name,
                                                        description=f"{p.section}.{p.name} ({p.kind})")
                              for p in space.params],
            trial_spec=job))
    return V1beta1Experiment(api_version="kubeflow.org/v1beta1", kind="Experiment",
                             metadata=V1ObjectMeta(name=name, namespace=namespace), spec=spec)


def render_katib_experiment(space: SearchSpace, tune_cfg: TuneConfig, image: str, data: str,
                            namespace: str = "kubeflow", **kw) -> dict:
    """`build_katib_experiment` serialised (the SDK's ApiClient.sanitize_for_serialization) -> a manifest dict."""
    from kubeflow.katib import ApiClient

    return ApiClient().sanitize_for_serialization(build_katib_experiment(space, tune_cfg, image, data, namespace, **kw))


def write_katib_experiment(path: str | Path, manifest: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Katib Experiment rendered by `mirec tune --katib-out`; apply: kubectl apply -f "
                    f"{path.name}\n" + yaml.safe_dump(manifest, sort_keys=False))
    return path


# ---- a Katib trial: `mirec tune-trial` ------------------------------------------------------------------------------
def parse_sets(sets: list[str]) -> dict[str, dict[str, Any]]:
    """["train.lr=0.001", "model.K=4", ...] -> {"model": {...}, "train": {...}} (values parsed as YAML scalars)."""
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for s in sets:
        key, sep, raw = s.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in out or not name:
            raise ConfigError(f"--set {s!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        if "${" in raw:
            raise ConfigError(f"--set {s!r}: unsubstituted Katib placeholder (run this inside a Katib trial)")
        out[section][name] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    """A Katib parameter value (always a string) as int, float (also '1e-06', which YAML 1.1 reads as a string),
    bool / null, or the string itself."""
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    try:
        v = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return v if isinstance(v, (bool, str)) or v is None else raw


def run_trial(data: str | Path, out_dir: str | Path, base: dict, sets: list[str],
              echo: Callable[[str], None] = print):
    """Train one Katib trial; echo `<time> epoch=N val_recall_at_50=X val_ndcg_at_50=Y` after every epoch."""
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train

    if not isinstance(base, dict) or set(base) - {"model", "train"}:
        raise ConfigError("--base: expected a JSON object with `model` and/or `train`")
    upd = parse_sets(sets)
    mcfg = validate_config(ModelConfig, {**(base.get("model") or {}), **upd["model"]})
    tcfg = validate_config(TrainConfig, {**(base.get("train") or {}), **upd["train"]})

    def on_eval(epoch: int, val: dict) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts = [f"{KATIB_METRICS[k]}={float(val[k]):.6f}" for k in KATIB_METRICS if val.get(k) is not None]
        echo(f"{now} epoch={epoch} " + " ".join(parts))

    res = train(data, mcfg, tcfg, out_dir, progress=False, on_eval=on_eval)
    return res


# ---- pipeline step ---------------------------------------------------------------------------------------------------
class TuningStep(StrictModel):
    """The training pipeline's `tuning` parameter."""

    enabled: bool = False
    trials: int = Field(10, ge=1)
    epochs: int | None = Field(None, ge=1)  # most epochs per trial (None: the pipeline's epochs)
    timeout_s: float | None = Field(None, gt=0)
    jobs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    space: list[dict] | dict | None = None  # a SearchSpace (`params:` list, or the bare list); None = default


def tune_step(dataset_dir: str | Path, out_dir: str | Path, model_config: dict, train_config: dict | None = None,
              k_interests: int | None = None, epochs: int | None = None, tuning: dict | None = None) -> dict:
    """Pipeline step: tune candidate A's configs on the training data, or (tuning.enabled false) pass them through
    unchanged. -> info with `model_config` / `train_config` for the training step; files in out_dir."""
    from mirec import steps

    cfg = validate_config(TuningStep, dict(tuning or {}))  # kfp hands ints over as whole floats: pydantic takes them
    out = fresh_dir(out_dir)
    t0 = time.perf_counter()
    if not cfg.enabled:
        info = {"status": "skipped", "enabled": False, "model_config": dict(model_config or {}),
                "train_config": dict(train_config or {})}
    else:
        base_m, base_t = steps.model_and_train_configs(model_config, train_config, k_interests, epochs)
        space = (space_from_dict(cfg.space if isinstance(cfg.space, dict) else {"params": cfg.space})
                 if cfg.space is not None else SearchSpace.default())
        tcfg = TuneConfig(n_trials=cfg.trials, timeout_s=cfg.timeout_s, n_jobs=cfg.jobs, seed=cfg.seed,
                          epochs=cfg.epochs or base_t.epochs, study_name="pipeline")
        res = run_study(dataset_dir, out, tcfg, space, base_m, base_t, progress=True)
        info = {"status": "ok", "enabled": True, "trials": res.n_trials, "states": res.states,
                "best_trial": res.best_trial, "best_value": res.best_value, "best_params": res.best_params,
                "metric": f"valid {tcfg.metric}",
                "model_config": res.model_cfg.model_dump(mode="json", exclude={"n_items"}, exclude_defaults=True)
                | {"name": res.model_cfg.name},
                "train_config": res.train_cfg.model_dump(mode="json", exclude_defaults=True)}
    info = {"step": "tune_candidate", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info,
            "seconds": round(time.perf_counter() - t0, 2)}
    (out / STEP_FILE).write_text(json.dumps(info, indent=2, default=str))
    return info
