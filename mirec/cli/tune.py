"""`mirec tune` (an Optuna study, or a Katib Experiment with --katib-out) and `mirec tune-trial` (one Katib trial).

Registered as top-level commands by mirec/cli/__init__.py; all logic lives in mirec/tune.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mirec.errors import ConfigError


def tune_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (`mirec data prepare` / `mirec data synth`). "
                              "With --katib-out: the directory as the trial pods see it (e.g. on the PVC)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name; overrides the --config file's model.name "
                                        "(default: the file's, else mind)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory: best_config.yaml, study.json, study.png, "
                                       "study.db (the study: run again with the same --out to add trials), trials/."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials this run adds to the study "
                                         "(default 20, or as many as --timeout allows)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Start no new trial after this many seconds."),
    jobs: int = typer.Option(1, "--jobs", help="Parallel trials (worker processes; each trial gets cores // jobs threads)."),
    epochs: int = typer.Option(10, "--epochs", help="Most epochs per trial (validation Recall@50 after each one; "
                               "the median pruner stops weak trials early)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Study storage: a SQLite file path or an SQLAlchemy URL "
                                          "(default OUT/study.db; 'memory' = no resume)."),
    study_name: str = typer.Option("mirec", "--study-name", help="Study name inside the storage."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space YAML (`params:` list of name/section/kind/"
                                         "low/high/log/step/choices); default: docs/models.md, \"Tuning\"."),
    config: Optional[Path] = typer.Option(None, "--config", help="Base config YAML (the `mirec train --config` format): "
                                          "everything the search space does not tune."),
    seed: int = typer.Option(0, "--seed", help="TPE sampler seed."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Never prune a trial early."),
    katib_out: Optional[Path] = typer.Option(None, "--katib-out", help="Render the same search space as a Katib "
                                             "Experiment YAML here instead of running a local study."),
    image: str = typer.Option("ghcr.io/mirec-project/mirec:0.1.0", "--image", help="Trial image (with --katib-out)."),
    namespace: str = typer.Option("kubeflow", "--namespace", help="Experiment namespace (with --katib-out)."),
    name: str = typer.Option("mirec-tune", "--name", help="Experiment name (with --katib-out)."),
    pvc: Optional[str] = typer.Option(None, "--pvc", help="PVC holding --data, mounted in the trial pods (with --katib-out)."),
    mount_path: str = typer.Option("/mnt/mirec", "--mount-path", help="Where --pvc is mounted (with --katib-out)."),
    gpus: int = typer.Option(0, "--gpus", help="GPUs per trial pod (with --katib-out)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="One line per finished trial on stderr."),
) -> None:
    """Tune hyper-parameters: an Optuna study (TPE, median pruning on validation Recall@50 after each epoch,
    SQLite storage so a re-run resumes) over the search space; writes OUT/best_config.yaml for
    `mirec train --config`, OUT/study.json and OUT/study.png (optimisation history, parameter importances).

    With --katib-out FILE the same search space is rendered as a Katib Experiment (kubectl apply -f FILE) whose
    trials run `mirec tune-trial` in --image."""
    from mirec.tune import (SearchSpace, TuneConfig, load_base_config, render_katib_experiment, run_study,
                            write_katib_experiment)
    from mirec.config import validate_config

    sp = SearchSpace.load(space)
    mcfg, tcfg = load_base_config(config, model)
    tune_cfg = validate_config(TuneConfig, {"n_trials": trials if trials is not None else (None if timeout else 20), "timeout_s": timeout, "n_jobs": jobs, "epochs": epochs,
                                            "storage": storage, "study_name": study_name, "seed": seed,
                                            "prune": not no_prune})
    if katib_out is not None:
        manifest = render_katib_experiment(sp, tune_cfg, image, str(data), namespace, name=name, base_model_cfg=mcfg,
                                           base_train_cfg=tcfg, pvc=pvc, mount_path=mount_path, gpus=gpus)
        path = write_katib_experiment(katib_out, manifest)
        typer.echo(f"wrote {path} (Katib Experiment {namespace}/{name}, {len(sp.params)} parameters, "
                   f"{manifest['spec']['maxTrialCount']} trials); submit with: kubectl apply -f {path}")
        return
    if out is None:
        raise ConfigError("--out is required for a local study (or give --katib-out to render a Katib Experiment)")
    res = run_study(data, out, tune_cfg, sp, mcfg, tcfg, progress=progress)
    typer.echo(json.dumps({"best_config": str(res.best_config), "best_trial": res.best_trial,
                           f"best_valid_{tune_cfg.metric}": res.best_value, "best_params": res.best_params,
                           "trials": res.n_trials, "states": res.states, "study": res.study_name,
                           "storage": res.storage, "plot": str(out / "study.png")}, indent=2, default=str))


def trial_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory."),
    out: Path = typer.Option(Path("/tmp/mirec-trial"), "--out", help="Checkpoint directory of this trial."),
    base: str = typer.Option("{}", "--base", help='Base configs as JSON: {"model": {...}, "train": {...}}.'),
    set_: list[str] = typer.Option([], "--set", help="section.field=value (Katib fills in ${trialParameters.x})."),
) -> None:
    """One Katib trial: train base + --set values, printing `<time> epoch=N val_recall_at_50=X val_ndcg_at_50=Y`
    after every epoch (what Katib's StdOut metrics collector and median stopping read)."""
    from mirec.tune import run_trial

    try:
        base_cfg = json.loads(base)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--base is not valid JSON: {exc}") from None
    res = run_trial(data, out, base_cfg, set_, echo=lambda s: typer.echo(s))
    typer.echo(json.dumps({"checkpoint": str(res.checkpoint), **res.metrics}, default=str))


COMMANDS: list[dict] = [
    {"fn": tune_cmd, "kwargs": {"name": "tune"}},
    {"fn": trial_cmd, "kwargs": {"name": "tune-trial", "hidden": True}},
]
