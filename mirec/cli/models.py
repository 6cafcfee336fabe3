"""`mirec train` and `mirec evaluate` (registered as top-level commands by mirec/cli/__init__.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mirec.errors import ConfigError


def train_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (`mirec data prepare` / `mirec data synth`)."),
    model: str = typer.Option("mind", "--model", help="Model name: mind, comirec_sa, comirec_dr, single, mean."),
    out: Path = typer.Option(..., "--out", help="Output directory: model.pt, model_config.json, metrics.jsonl, training_curve.png."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with `model:` (ModelConfig) and `train:` (TrainConfig) sections."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override train.epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override train.batch_size."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Override train.lr."),
    k: Optional[int] = typer.Option(None, "--k", help="Override model.K (number of interests)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Override model.dim."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override train.seed."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    remi_rr: Optional[float] = typer.Option(None, "--remi-rr", help="REMI routing-regularisation weight (0 = off)."),
    remi_beta: Optional[float] = typer.Option(None, "--remi-beta", help="REMI hard-negative temperature β (0 = off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt if present."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a multi-interest model; the best weights (validation Recall@50) go to OUT/model.pt.

    Runs unchanged under `torchrun --nproc_per_node N -m mirec.train ...` (DistributedDataParallel)."""
    import yaml

    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train

    raw: dict = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file not found: {config}")
        raw = yaml.safe_load(config.read_text()) or {}
        if not isinstance(raw, dict) or set(raw) - {"model", "train"}:
            raise ConfigError(f"{config}: expected a mapping with `model:` and/or `train:` sections")
    mcfg = _validate(ModelConfig, raw.get("model") or {}, name=model if config is None or "name" not in (raw.get("model") or {}) else None,
                     K=k, dim=dim)
    tcfg = _validate(TrainConfig, raw.get("train") or {}, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                     max_steps=max_steps, remi_rr_weight=remi_rr, remi_hard_neg_beta=remi_beta)
    res = train(data, mcfg, tcfg, out, progress=progress, resume=resume)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun: one summary, clean shutdown
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    typer.echo(json.dumps({"checkpoint": str(res.checkpoint), **res.metrics}, indent=2))


def _validate(cls, data: dict, **overrides):
    from mirec.config import validate_config

    return validate_config(cls, data, **overrides)


def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint directory written by `mirec train`."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, metrics.md and served.jsonl here."),
    split: str = typer.Option("test", "--split", help="valid or test."),
    aggregator: str = typer.Option("merge", "--aggregator", help="Aggregator: merge (ComiRec protocol), controllable, ..."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Evaluate a non-neural baseline instead: popularity or itemknn."),
    exclude_seen: bool = typer.Option(False, "--exclude-seen/--keep-seen", help="Drop items of the history from the lists (the ComiRec protocol keeps them)."),
) -> None:
    """Evaluate a checkpoint (or a baseline): Recall/HitRate/NDCG@20/50, diversity and collapse metrics."""
    from mirec.data import Dataset
    from mirec.evaluate import evaluate, markdown_table
    from mirec.models import fit_baseline

    if (checkpoint is None) == (baseline is None):
        raise ConfigError("give exactly one of --checkpoint or --baseline")
    if checkpoint is not None and not (checkpoint / "model.pt").exists():
        raise ConfigError(f"{checkpoint} is not a checkpoint directory (no model.pt); run `mirec train` first")
    ds = Dataset(data)
    model = checkpoint if checkpoint is not None else fit_baseline(baseline, ds.train_sequences(), ds.n_items)
    res = evaluate(model, ds, split=split, aggregator=aggregator, out_dir=out, exclude_seen=exclude_seen,
                   name=baseline)
    typer.echo(markdown_table([{"metric": k, "value": v} for k, v in res["metrics"].items()]))


COMMANDS: list[dict] = [
    {"fn": train_cmd, "kwargs": {"name": "train"}},
    {"fn": evaluate_cmd, "kwargs": {"name": "evaluate"}},
]
