"""`mirec pipeline`: compile | run --local | submit --host URL | render-pytorchjob | train-worker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from mirec.errors import ConfigError

app = typer.Typer(no_args_is_help=True)

#: a seconds-scale configuration (tests, smoke runs): small synthetic data, 1 epoch, small models
TINY_PARAMS: dict = {
    "data_config": {"synth": {"n_users": 200, "n_items": 300, "n_categories": 6, "seq_len": [15, 40]}},
    "candidate_a": {"name": "mind", "dim": 16},
    "candidate_b": {"name": "comirec_sa", "dim": 16},
    "k_interests": 3,
    "epochs": 1,
    "train_config": {"batch_size": 128, "num_negatives": 64},
    "max_feast_labels": 200,
}


def _pipelines():
    try:
        import pipelines.local as pl
    except ImportError:  # mirec installed without the repo's top-level packages: use this checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import pipelines.local as pl
    return pl


def load_params(params_file: Path | None, sets: list[str] | None, tiny: bool = False) -> dict:
    """Pipeline arguments: TINY_PARAMS (with --tiny) < --params YAML/JSON file < --set key=JSON-or-string."""
    import yaml

    params: dict = dict(TINY_PARAMS) if tiny else {}
    if params_file is not None:
        if not params_file.is_file():
            raise ConfigError(f"params file not found: {params_file}")
        data = yaml.safe_load(params_file.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"params file {params_file} must hold a mapping of pipeline parameters")
        params.update(data)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, val = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            params[key.strip()] = val
    return params


@app.command("compile")
def compile_cmd(
    name: list[str] = typer.Option(None, "--name", "-n", help="Pipeline module(s) in pipelines/ (default: all)."),
    out_dir: Path = typer.Option(None, "--out-dir", help="Default: pipelines/compiled/."),
) -> None:
    """Compile the pipelines to YAML (pipelines/compiled/<name>.yaml), the file to upload in the Kubeflow UI."""
    pl = _pipelines()
    for n in name or pl.available_pipelines():
        out = pl.compile_pipeline(n, (out_dir / f"{n}.yaml") if out_dir else None)
        typer.echo(f"compiled {n} -> {out}")


@app.command("run")
def run_cmd(
    local: bool = typer.Option(False, "--local", help="Run with kfp's local runner on this machine (required)."),
    params: Path = typer.Option(None, "--params", "-p", help="YAML/JSON file of pipeline parameters."),
    set_: list[str] = typer.Option(None, "--set", help="key=value pipeline parameter (value parsed as JSON)."),
    tiny: bool = typer.Option(False, "--tiny", help="Small synthetic data, 1 epoch: a smoke run of ~2-3 minutes."),
    pipeline_root: Path = typer.Option(Path("artifacts/pipeline_root"), "--pipeline-root",
                                       help="Where the run's artifacts land."),
    compiled: Path = typer.Option(None, "--compiled", help="Run this compiled YAML instead of the Python pipeline."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="kfp's per-task output to <pipeline-root>/last-run.log; print only the summary."),
) -> None:
    """Run the training pipeline end to end; prints where the artifacts are, the gate decisions and the table."""
    if not local:
        raise ConfigError("only local runs here: add --local (use `mirec pipeline submit --host URL` for a cluster)")
    from mirec.steps import run_main

    try:
        run_main(load_params(params, set_, tiny), pipeline_root=pipeline_root, compiled=compiled, echo=typer.echo,
                 quiet=quiet)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:2000]
        if quiet:
            msg += f" (task output: {pipeline_root / 'last-run.log'})"
        typer.secho(f"pipeline failed: {msg}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command("submit")
def submit_cmd(
    host: str = typer.Option(..., "--host", help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080"),
    params: Path = typer.Option(None, "--params", "-p", help="YAML/JSON file of pipeline parameters."),
    set_: list[str] = typer.Option(None, "--set", help="key=value pipeline parameter (value parsed as JSON)."),
    package: Path = typer.Option(None, "--package", help="Compiled YAML (default pipelines/compiled/training_pipeline.yaml)."),
    experiment: str = typer.Option("mirec", "--experiment"),
    run_name: str = typer.Option(None, "--run-name"),
    namespace: str = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user installs)."),
    token: str = typer.Option(None, "--token", envvar="KFP_TOKEN", help="Bearer token (or env KFP_TOKEN)."),
) -> None:
    """Submit the compiled pipeline to Kubeflow Pipelines with kfp.Client (or upload the YAML in the UI)."""
    run_id = _pipelines().submit(host, load_params(params, set_), package=package, experiment=experiment,
                                 run_name=run_name, namespace=namespace, existing_token=token)
    typer.echo(f"submitted run {run_id} to {host}")


@app.command("render-pytorchjob")
def render_pytorchjob_cmd(
    name: str = typer.Option("mirec-train", "--name"),
    image: str = typer.Option("ghcr.io/mirec-project/mirec:0.1.0", "--image"),
    workers: int = typer.Option(2, "--workers", min=1, help="Total replicas (1 Master + workers-1 Workers)."),
    gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs per replica."),
    namespace: str = typer.Option("kubeflow", "--namespace"),
    out: Path = typer.Option(None, "--out", "-o", help="Write the manifest here (default: stdout)."),
) -> None:
    """Render the distributed-training PyTorchJob (k8s/pytorchjob.yaml) for `kubectl apply -f`."""
    import yaml

    from mirec.steps import render_pytorchjob

    cmd = ["mirec", "pipeline", "train-worker", "--dataset-dir", "/mnt/mirec/dataset", "--model-config",
           "/mnt/mirec/model_config.json", "--train-config", "/mnt/mirec/train_config.json", "--out-dir",
           "/mnt/mirec/checkpoint"]
    text = yaml.safe_dump(render_pytorchjob(name, image, cmd, workers=workers, namespace=namespace,
                                            gpus_per_worker=gpus), sort_keys=False)
    if out:
        out.write_text(text)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)


@app.command("train-worker")
def train_worker_cmd(
    dataset_dir: Path = typer.Option(..., "--dataset-dir"),
    model_config: Path = typer.Option(..., "--model-config", help="ModelConfig JSON."),
    train_config: Path = typer.Option(..., "--train-config", help="TrainConfig JSON."),
    out_dir: Path = typer.Option(..., "--out-dir"),
) -> None:
    """One replica of a distributed training job (what the PyTorchJob runs; DDP env set by the operator)."""
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train

    res = train(dataset_dir, ModelConfig.model_validate_json(model_config.read_text()),
                TrainConfig.model_validate_json(train_config.read_text()), out_dir, progress=False)
    typer.echo(json.dumps(res.metrics, default=str))
