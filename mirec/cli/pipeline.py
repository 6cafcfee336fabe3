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
    # the champion/challenger rule is OFF in the smoke run: on data this small every baseline beats a 1-epoch MIND
    # (test recall@50: item-kNN 0.72, popularity 0.62, single-interest 0.23 vs MIND 0.19-0.29), so nothing would
    # ship; the baselines step still runs (single-interest only: cheap) and the gate keeps its thresholds
    "baselines": [{"name": "single", "dim": 16}],
    "thresholds": {"champion_challenger": False},  # false, not null: kfp refuses a None inside a dict parameter
}


def _pipelines():
    try:
        import pipelines.local as pl
    except ImportError:  # mirec installed without the repo's top-level packages: use this checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import pipelines.local as pl
    return pl


# ---- the local run of the training pipeline (`mirec main`, `mirec pipeline run --local`) --------------
class _RedirectFds:
    """Send this process's (and its children's) stdout/stderr to a file at the fd level (kfp's local runner
    streams every task's full executor input/output; --quiet keeps that in a log file instead)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        self.f = open(self.path, "ab")
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.f.fileno(), 1)
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.f.close()
        return False


def run_main(params: dict | None = None, pipeline_root: str | Path = "artifacts/pipeline_root",
             compiled: str | Path | None = None, echo=print, quiet: bool = False) -> dict:
    """The README's main job: run the training pipeline with kfp's local runner, then print the summary.
    quiet: kfp's per-task output goes to <pipeline_root>/last-run.log instead of the terminal.
    -> {"run_dir", "summary", "decision", "wall_s"}."""
    import contextlib
    import time

    from mirec.reports import collect_run, summarize_run

    run_local = _pipelines().run_local
    t0 = time.perf_counter()
    log = Path(pipeline_root) / "last-run.log"
    if quiet:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        echo(f"running the training pipeline with kfp's local runner (task output: {log}) ...")
    with _RedirectFds(log) if quiet else contextlib.nullcontext():
        run_dir = run_local(params, pipeline_root=pipeline_root, compiled=compiled)
    wall = time.perf_counter() - t0
    text = summarize_run(run_dir, wall)
    (Path(run_dir) / "summary.txt").write_text(text + "\n")
    echo(text)
    return {"run_dir": str(run_dir), "summary": text, "decision": collect_run(run_dir)["decision"], "wall_s": wall}


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
    workers: int = typer.Option(2, "--workers", min=1, help="Nodes (TrainJob numNodes; PyTorchJob 1 Master + "
                                "workers-1 Workers)."),
    gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs per node (= torchrun processes per node)."),
    namespace: str = typer.Option(..., "--namespace", help="Your Kubeflow profile's namespace."),
    kind: str = typer.Option("trainjob", "--kind", help="trainjob (Kubeflow Trainer v2) | pytorchjob (legacy)."),
    pvc: str = typer.Option("mirec-artifacts", "--pvc", help="ReadWriteMany claim mounted at /mnt/mirec."),
    rbac: bool = typer.Option(False, "--rbac", help="Render the launcher's Role + RoleBinding instead."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the manifest here (default: stdout)."),
) -> None:
    """Render the distributed-training job (or, with --rbac, the Role the pipeline's launcher needs) for
    `kubectl apply -f`."""
    import yaml

    from mirec.launch import LaunchConfig, render_launcher_rbac, render_pytorchjob, render_trainjob, torchrun_command

    if kind not in ("trainjob", "pytorchjob"):
        raise ConfigError(f"--kind must be trainjob or pytorchjob, not {kind!r}")
    args = ["--dataset-dir", "/mnt/mirec/dataset", "--model-config", "/mnt/mirec/model_config.json",
            "--train-config", "/mnt/mirec/train_config.json", "--out-dir", "/mnt/mirec/checkpoint"]
    cmd = torchrun_command(args)
    if rbac:
        docs = render_launcher_rbac(namespace)
    elif kind == "trainjob":
        docs = [render_trainjob(name, image, cmd, LaunchConfig(workers=workers, gpus_per_worker=gpus), namespace, pvc)]
    else:
        docs = [render_pytorchjob(name, image, cmd, workers=workers, namespace=namespace, gpus_per_worker=gpus,
                                  pvc_name=pvc)]
    text = yaml.safe_dump_all(docs, sort_keys=False)
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
    """One process of a distributed training job (what the TrainJob / PyTorchJob runs under torchrun; DDP env
    set by torchrun). Trains on the Feast examples when the dataset carries them (build_training_data)."""
    from mirec.examples import EXAMPLES_FILE, FrameExamples
    from mirec.models import ModelConfig
    from mirec.stepio import read_step
    from mirec.train import TrainConfig, train

    mcfg = ModelConfig.model_validate_json(model_config.read_text())
    examples = None
    if (dataset_dir / EXAMPLES_FILE).is_file():
        examples = FrameExamples.read(dataset_dir / EXAMPLES_FILE, mcfg.max_len,
                                      seq_len=read_step(dataset_dir).get("seq_len"))
    res = train(dataset_dir, mcfg, TrainConfig.model_validate_json(train_config.read_text()), out_dir, progress=False,
                examples=examples)
    typer.echo(json.dumps(res.metrics, default=str))
