"""Top-level `mirec` commands of this subsystem. COMMANDS: [{"fn": callable, "kwargs": {...}}].

  mirec package   one TorchServe MAR per candidate + config/config.properties
  mirec serve     TorchServe (all packaged MARs) + the recommendation API on loopback; Ctrl-C stops both
  mirec api       the recommendation API alone, in front of a running TorchServe
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mirec.errors import ConfigError


def package_cmd(
    checkpoint: List[Path] = typer.Option(None, "--checkpoint", "-c", help="Checkpoint dir of a trained candidate "
                                          "(repeat for several candidates)."),
    name: List[str] = typer.Option(None, "--name", "-n", help="TorchServe model name per checkpoint "
                                   "(default mirec_a, mirec_b, ...)."),
    spec: Optional[Path] = typer.Option(None, "--spec", help="YAML PackageSpec (candidates, index, batching, "
                                        "server profile); replaces the other options."),
    out: Path = typer.Option(Path("artifacts/serving"), "--out", "-o", help="Output dir: model-store/ + config/."),
    index: str = typer.Option("flat", help="FAISS index: flat | ivf | hnsw | hnsw_sq8 | ivfpq_fs | auto (build "
                              "ivfpq_fs, hnsw_sq8, hnsw, flat in turn and keep the cheapest by measured search latency "
                              "that reaches --target-recall as answer recall@50; the choice goes into index.json and "
                              "meta.json)."),
    target_recall: float = typer.Option(0.9, min=0.0, max=1.0, help="ANN kinds: set nprobe/efSearch to the cheapest "
                                        "value whose recall vs exact search reaches this (recall@100 per interest; "
                                        "auto: answer recall@50; measured at package time, written to meta.json); "
                                        "0 = keep the defaults, still measured (auto: 0.95)."),
    recall_data: Optional[Path] = typer.Option(None, "--recall-data", help="Prepared dataset whose test/valid users' "
                                               "histories (held out from training) the index recall is measured on; "
                                               "default: histories sampled by popularity."),
    version: str = typer.Option("1.0", help="Version string stored in every MAR."),
    aggregator: str = typer.Option("merge", help="Aggregator name from mirec.retrieval's registry."),
    profile: str = typer.Option("local", help="config.properties profile: local (loopback, no token auth) | "
                                "production (token auth on) | kserve (token auth off: the API, in another pod, "
                                "has no key)."),
    workers: int = typer.Option(1, min=1, help="Workers per model."),
    batch_size: int = typer.Option(8, min=1, help="TorchServe batch size per model."),
    max_batch_delay_ms: int = typer.Option(1, min=0, help="TorchServe max batch delay (ms): how long a batch waits to fill."),
    client_timeout_ms: int = typer.Option(1000, min=0, help="TorchServe drops a request still queued after this long "
                                          "(clientTimeoutInMills in the MAR); keep it = the API's timeout_ms. 0 = never."),
    archive_format: str = typer.Option("default", help="default (.mar) | no-archive (a folder; faster for big indexes)."),
) -> None:
    """Package trained candidates as TorchServe MARs (+ config.properties) for TorchServe / KServe."""
    from mirec.config import validate_config
    from mirec.serving.packaging import PackageSpec, load_package_spec, package

    if spec is not None:
        ps = load_package_spec(spec, out_dir=str(out) if out != Path("artifacts/serving") else None)
    else:
        if not checkpoint:
            raise ConfigError("give --checkpoint DIR (one per candidate) or --spec FILE")
        names = list(name or [])
        if names and len(names) != len(checkpoint):
            raise ConfigError(f"{len(names)} --name for {len(checkpoint)} --checkpoint")
        names = names or [f"mirec_{chr(ord('a') + i)}" for i in range(len(checkpoint))]
        ps = validate_config(PackageSpec, {
            "out_dir": str(out), "archive_format": archive_format, "server": {"profile": profile},
            "candidates": [{"name": n, "checkpoint": str(c), "version": version, "aggregator": aggregator,
                            "index": {"kind": index, "target_recall": target_recall or None,
                                      "recall_histories": str(recall_data) if recall_data else None},
                            "workers": workers, "batch_size": batch_size, "max_batch_delay_ms": max_batch_delay_ms,
                            "client_timeout_ms": client_timeout_ms or None} for n, c in zip(names, checkpoint)]})
    package(ps, log=typer.echo)


def serve_cmd(
    package_dir: Path = typer.Option(Path("artifacts/serving"), "--package", "-p", help="`mirec package` output."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="API settings YAML (arms, salt, log, feast); "
                                            "default: an even split over the packaged models."),
    port: int = typer.Option(8000, help="API port (127.0.0.1)."),
    ts_port: int = typer.Option(8080, help="TorchServe inference port; management = +1, metrics = +2, gRPC = +3, +4 (127.0.0.1)."),
    workdir: Optional[Path] = typer.Option(None, help="TorchServe logs / temp dir (default: a fresh temp dir)."),
    log: Optional[str] = typer.Option(None, help="Served-log path (overrides the settings)."),
    warmup: int = typer.Option(5000, min=0, help="Warm-up calls per model before /readyz says ready (a cold Java "
                               "frontend answers ~2x slower; docs/serving.md \"Warm-up\"); 0 = off. Overrides the "
                               "settings' warmup.requests."),
) -> None:
    """Start the local stack on loopback: TorchServe with every packaged MAR + the A/B API. Ctrl-C stops both.

    Exits 2 with one line when it cannot start (a port in use, a MAR that fails its sha256 check or does not load),
    1 when TorchServe dies while serving (the API is stopped too)."""
    from mirec.serving.stack import LocalStack
    from mirec.serving.torchserve import TorchServeDied

    stack = LocalStack(package_dir, settings=settings, workdir=workdir, api_port=port,
                       ts_ports=(ts_port, ts_port + 1, ts_port + 2), log_path=log,
                       grpc_ports=(ts_port + 3, ts_port + 4), warmup_requests=warmup)
    arms = ", ".join(f"{a.name}={a.model} ({a.weight:g})" for a in stack.settings.experiment.arms)
    typer.echo(f"TorchServe {stack.ts.inference_url} (logs {stack.ts.log_dir}); API {stack.api_url}; arms {arms}; "
               f"served log {stack.settings.log_path}")
    if warmup:
        typer.echo(f"warming up each model with {warmup} calls: {stack.api_url}/readyz says ready when done")
    try:
        stack.run_forever()
    except TorchServeDied as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo("stopped")


def api_cmd(
    settings: Optional[Path] = typer.Option(None, "--settings", help="API settings YAML (docs/CONTRACTS.md)."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
) -> None:
    """Run the recommendation API (A/B assignment, served log, /metrics) in front of a running TorchServe."""
    from mirec.serving.api import run_api
    from mirec.serving.settings import load_settings

    run_api(load_settings(settings), host=host, port=port)


COMMANDS: list[dict] = [
    {"fn": package_cmd, "kwargs": {"name": "package"}},
    {"fn": serve_cmd, "kwargs": {"name": "serve"}},
    {"fn": api_cmd, "kwargs": {"name": "api"}},
]
