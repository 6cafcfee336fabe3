"""Compile, run locally (kfp local SubprocessRunner) and submit the pipelines.

The local runner executes every component as a subprocess of this machine's Python (`use_venv=False`), so the
components import the installed `mirec`; artifacts land under <pipeline_root>/<pipeline-name>-<timestamp>/<task>/.
"""

import importlib
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPILED_DIR = REPO / "pipelines" / "compiled"
#: module name -> attribute holding the pipeline function (every pipeline of the folder; the compile-sync
#: test covers all of them that import)
PIPELINES = {"training_pipeline": "training_pipeline", "monitoring_pipeline": None}


def load_pipeline(module: str):
    mod = importlib.import_module(f"pipelines.{module}")
    attr = PIPELINES.get(module)
    if attr and hasattr(mod, attr):
        return getattr(mod, attr)
    if hasattr(mod, "PIPELINE"):
        return mod.PIPELINE
    from kfp.dsl.graph_component import GraphComponent

    found = [v for v in vars(mod).values() if isinstance(v, GraphComponent)]
    if len(found) != 1:
        raise RuntimeError(f"pipelines/{module}.py: expected one pipeline function, found {len(found)}")
    return found[0]


def available_pipelines() -> list[str]:
    """Every pipelines/<name>.py that defines a pipeline (module names)."""
    names = []
    for f in sorted((REPO / "pipelines").glob("*.py")):
        if f.stem in ("__init__", "local"):
            continue
        names.append(f.stem)
    return names


def compile_pipeline(module: str = "training_pipeline", out: str | Path | None = None) -> Path:
    from kfp import compiler

    out = Path(out) if out else COMPILED_DIR / f"{module}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load_pipeline(module), str(out))
    return out


def create_recurring_run(module: str, host: str, experiment: str, cron: str, params: dict | None = None,
                         package: str | Path | None = None):  # pragma: no cover (needs a Kubeflow Pipelines host)
    """Schedule a compiled pipeline (pipelines/compiled/<module>.yaml) on a Kubeflow Pipelines host (kfp.Client):
    one run at a time, no catch-up of missed slots."""
    import kfp

    mod = importlib.import_module(f"pipelines.{module}")
    client = kfp.Client(host=host)
    exp = client.create_experiment(experiment)
    return client.create_recurring_run(experiment_id=exp.experiment_id, job_name=mod.PIPELINE_NAME,
                                       cron_expression=cron,
                                       pipeline_package_path=str(package or COMPILED_DIR / f"{module}.yaml"),
                                       params=params or {}, max_concurrency=1, no_catchup=True)


def _runner_env() -> None:
    # the local runner starts `python3 ...`: make it this interpreter (the venv holding mirec)
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # the components' own `import mirec` must find this checkout even without an editable install
    pp = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + pp if pp else "")


def run_local(params: dict | None = None, pipeline_root: str | Path = "artifacts/pipeline_root",
              compiled: str | Path | None = None, module: str = "training_pipeline") -> Path:
    """Run the pipeline (or a compiled YAML file) with kfp's local runner; -> the run's artifact directory.
    Raises RuntimeError naming the failed task when a step fails."""
    from kfp import components, local

    _runner_env()
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    if compiled:
        pipe = components.load_component_from_file(str(compiled))
    else:
        pipe = load_pipeline(module)
    before = {p.name for p in root.iterdir()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        # components name the project image; locally they run in this venv, which has everything the image has
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        pipe(**(params or {}))
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before), key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"the local run wrote nothing under {root}")
    return new[-1]


def submit(host: str, params: dict | None = None, package: str | Path | None = None, experiment: str = "mirec",
           run_name: str | None = None, namespace: str | None = None, existing_token: str | None = None):
    """Submit the compiled pipeline to a Kubeflow Pipelines endpoint with kfp.Client; -> the run's id."""
    import kfp

    package = Path(package) if package else COMPILED_DIR / "training_pipeline.yaml"
    if not package.is_file():
        raise FileNotFoundError(f"compiled pipeline not found: {package} (run `mirec pipeline compile`)")
    client_kw = {"namespace": namespace} if namespace else {}
    client = kfp.Client(host=host, existing_token=existing_token, **client_kw)
    run = client.create_run_from_pipeline_package(
        str(package), arguments=params or {}, run_name=run_name or f"mirec-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment, **client_kw)
    return run.run_id
