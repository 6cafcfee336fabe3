"""`mirec train` and `mirec evaluate` (registered as top-level commands by mirec/cli/__init__.py).

Every train option overrides the matching field of the --config YAML (ModelConfig under `model:`,
TrainConfig under `train:`); an option left out keeps the config's value, or the field's default.
The defaults quoted in the help texts are those of ModelConfig / TrainConfig (tests/test_cli_usability.py
checks that they agree). Choices are validated by the configs, so a bad value is one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mirec.errors import ConfigError

MODELS_HELP = "mind, comirec_sa, comirec_dr, single, mean, youtubednn, sasrec"
_M = "Model: "  # help prefixes, so `--help` says which config section an option sets
_T = "Training: "


def _opt(flag: str, help: str, default: str | bool = False):
    """An override option: None = not given (keep the config's value); `default` is the text shown as
    [default: ...] in --help (the config default it falls back to)."""
    return typer.Option(None, flag, help=help, show_default=default)


def train_cmd(
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory (`mirec data prepare` / `mirec data synth`)."),
    out: Path = typer.Option(..., "--out", help="Output directory: model.pt, model_config.json, train_config.json, "
                             "metrics.jsonl, training_curve.png."),
    model: Optional[str] = _opt("--model", f"Model name: {MODELS_HELP}.", "the config's model.name, else mind"),
    config: Optional[Path] = _opt("--config", "YAML with `model:` (ModelConfig) and `train:` (TrainConfig) sections; "
                                  "the options below override it."),
    # ---- model (ModelConfig) ----
    k: Optional[int] = _opt("--k", _M + "number of interests K.", "4"),
    dim: Optional[int] = _opt("--dim", _M + "embedding size.", "64"),
    max_len: Optional[int] = _opt("--max-len", _M + "use the last N items of each history.", "50"),
    similarity: Optional[str] = _opt("--similarity", _M + "how interests score items: cos (cosine / temperature) "
                                     "or dot (inner product).", "cos"),
    selection: Optional[str] = _opt("--selection", _M + "target-aware interest selection in training: hard (argmax), "
                                    "label_aware (MIND attention), sampled (BaM) or max (every candidate scored by "
                                    "its best interest).", "the model's own"),
    interest_head: Optional[str] = _opt("--interest-head", _M + "mlp (a shared MLP on every interest) or none.",
                                        "the model's own: mlp for comirec_sa/single, else none"),
    attn_temperature: Optional[float] = _opt("--attn-temperature", _M + "ComiRec-SA attention temperature; > 1 "
                                             "spreads attention over more items.", "1.0"),
    dropout: Optional[float] = _opt("--dropout", _M + "dropout of SASRec / YoutubeDNN, in [0, 1).", "0.0"),
    # ---- training (TrainConfig) ----
    epochs: Optional[int] = _opt("--epochs", _T + "most epochs; early stopping usually ends sooner.", "100"),
    patience: Optional[int] = _opt("--patience", _T + "stop after N validations without a better Recall@50.", "5"),
    max_time: Optional[float] = _opt("--max-time", _T + "wall-time limit in seconds (train.max_time_s).", "none"),
    max_steps: Optional[int] = _opt("--max-steps", _T + "stop after this many optimiser steps.", "none"),
    samples_per_epoch: Optional[int] = _opt("--samples-per-epoch", _T + "training examples drawn per epoch.", "all of them"),
    sampling: Optional[str] = _opt("--sampling", _T + "positions (every sequence position once per epoch) or users "
                                   "(every user equally likely, ComiRec's sampler).", "positions"),
    batch_size: Optional[int] = _opt("--batch-size", _T + "examples per batch.", "256"),
    lr: Optional[float] = _opt("--lr", _T + "learning rate.", "0.001"),
    optimizer: Optional[str] = _opt("--optimizer", _T + "adam or adamw.", "adam"),
    weight_decay: Optional[float] = _opt("--weight-decay", _T + "L2 (adam) or decoupled (adamw) weight decay.", "0.0"),
    schedule: Optional[str] = _opt("--schedule", _T + "lr after warm-up: constant, cosine or step.", "constant"),
    warmup_steps: Optional[int] = _opt("--warmup-steps", _T + "linear lr warm-up steps.", "0"),
    negatives: Optional[str] = _opt("--negatives", _T + "sampled-softmax negatives: uniform, in_batch or mixed.", "mixed"),
    num_negatives: Optional[int] = _opt("--num-negatives", _T + "uniform (or hard) negatives per batch.", "1024"),
    temperature: Optional[float] = _opt("--temperature", _T + "softmax temperature τ, logit = cos/τ (cos similarity "
                                        "only).", "0.2"),
    learn_temperature: Optional[bool] = typer.Option(
        None, "--learn-temperature/--fixed-temperature", show_default="fixed",
        help=_T + "train τ as a parameter starting at --temperature, or keep it fixed."),
    logq: Optional[bool] = typer.Option(None, "--logq/--no-logq", show_default="off",
                                        help=_T + "log-Q correction of the sampled logits."),
    remi_rr: Optional[float] = _opt("--remi-rr", _T + "REMI routing-regularisation weight (0 = off).", "0.0"),
    remi_beta: Optional[float] = _opt("--remi-beta", _T + "REMI hard-negative temperature β (0 = off).", "0.0"),
    seed: Optional[int] = _opt("--seed", _T + "random seed.", "42"),
    threads: Optional[int] = _opt("--threads", _T + "CPU threads for torch (train.num_threads).", "chosen from the cores"),
    device: Optional[str] = _opt("--device", _T + "auto, cpu or cuda.", "auto"),
    amp: Optional[str] = _opt("--amp", _T + "bf16 autocast: auto (on CUDA), bf16 or off.", "auto"),
    split_seed: Optional[int] = _opt("--split-seed", "Re-draw the ComiRec 8:1:1 user split with this seed before "
                                     "training (evaluate with the same --split-seed).", "the dataset's split"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt if present."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train a multi-interest model; the best weights (validation Recall@50) go to OUT/model.pt.

    Runs unchanged under `torchrun --nproc_per_node N -m mirec.cli train ...` (DistributedDataParallel)."""
    from mirec.config import load_yaml_sections
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train


    raw = load_yaml_sections(config, ("model", "train")) if config is not None else {}
    mcfg = _validate(ModelConfig, raw.get("model") or {}, name=model, K=k, dim=dim, max_len=max_len,
                     similarity=similarity, selection=selection, attn_temperature=attn_temperature, dropout=dropout,
                     interest_head=interest_head)
    check_model_name(mcfg.name)
    tcfg = _validate(TrainConfig, raw.get("train") or {}, epochs=epochs, patience=patience, max_time_s=max_time,
                     max_steps=max_steps, samples_per_epoch=samples_per_epoch, sampling=sampling,
                     batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                     warmup_steps=warmup_steps, negatives=negatives, num_negatives=num_negatives,
                     temperature=temperature, learn_temperature=learn_temperature, logq=logq,
                     remi_rr_weight=remi_rr, remi_hard_neg_beta=remi_beta, seed=seed, num_threads=threads,
                     device=device, amp=amp)
    dataset = _load_dataset(data, split_seed)
    res = train(dataset, mcfg, tcfg, out, progress=progress, resume=resume)
    import torch.distributed as dist

    if dist.is_initialized():  # under torchrun: one summary, clean shutdown
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    typer.echo(json.dumps({"checkpoint": str(res.checkpoint), **res.metrics}, indent=2))


def check_model_name(name: str) -> None:
    """An unknown model name is a one-line ConfigError naming the known models (and where baselines go)."""
    from mirec.errors import UnknownNameError
    from mirec.models import BASELINES, available_models

    if name not in available_models():
        hint = (f"; {name!r} is a baseline" if name in BASELINES else "")
        raise UnknownNameError(f"unknown model {name!r}; known: {', '.join(available_models())} (baselines "
                               f"{', '.join(BASELINES)} are evaluated with `mirec evaluate --baseline`{hint})")


def _validate(cls, data: dict, **overrides):
    from mirec.config import validate_config

    return validate_config(cls, data, **overrides)


def _load_dataset(data: Path, split_seed: int | None):
    from mirec.data import Dataset

    ds = Dataset(data)
    return ds if split_seed is None else ds.resplit(split_seed)


SPLITS = ("valid", "test")


def evaluate_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint directory written by `mirec train`."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, metrics.md and served.jsonl here."),
    split: str = typer.Option("test", "--split", help="valid or test."),
    split_seed: Optional[int] = _opt("--split-seed", "Re-draw the ComiRec 8:1:1 user split with this seed "
                                     "(repeated-split evaluation; a checkpoint should be trained with the same "
                                     "`mirec train --split-seed`).", "the dataset's split"),
    aggregator: str = typer.Option("merge", "--aggregator", help="Aggregator: merge (ComiRec protocol), controllable, ..."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Evaluate a non-neural baseline instead: popularity or itemknn."),
    neighbors: Optional[int] = _opt("--neighbors", "itemknn: keep the N most similar items per item.", "unpruned"),
    history_len: Optional[int] = _opt("--history-len", "itemknn: score with the last N items of each input.", "the whole input"),
    exclude_seen: bool = typer.Option(False, "--exclude-seen/--keep-seen", help="Drop items of the history from the lists (the ComiRec protocol keeps them)."),
) -> None:
    """Evaluate a checkpoint (or a baseline): Recall/HitRate/NDCG@20/50, diversity and collapse metrics."""
    from mirec.errors import UnknownNameError
    from mirec.evaluate import evaluate, markdown_table
    from mirec.models import BASELINES, fit_baseline
    from mirec.retrieval.aggregators import available as available_aggregators

    if (checkpoint is None) == (baseline is None):
        raise ConfigError("give exactly one of --checkpoint or --baseline")
    if baseline is not None and baseline not in BASELINES:
        raise UnknownNameError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)} (trained models are "
                               "evaluated with `--checkpoint DIR`)")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if aggregator not in available_aggregators():
        raise UnknownNameError(f"unknown aggregator {aggregator!r}; known: {', '.join(available_aggregators())}")
    knn = {k: v for k, v in {"neighbors": neighbors, "history_len": history_len}.items() if v is not None}
    for k, v in knn.items():
        if v < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
    if knn and baseline != "itemknn":
        raise ConfigError("--neighbors and --history-len apply to --baseline itemknn only")
    if checkpoint is not None and not (checkpoint / "model.pt").exists():
        raise ConfigError(f"{checkpoint} is not a checkpoint directory (no model.pt); run `mirec train` first")
    ds = _load_dataset(data, split_seed)
    model = checkpoint if checkpoint is not None else fit_baseline(baseline, ds.train_sequences(), ds.n_items, **knn)
    res = evaluate(model, ds, split=split, aggregator=aggregator, out_dir=out, exclude_seen=exclude_seen,
                   name=baseline)
    typer.echo(markdown_table([{"metric": k, "value": v} for k, v in res["metrics"].items()]))


COMMANDS: list[dict] = [
    {"fn": train_cmd, "kwargs": {"name": "train"}},
    {"fn": evaluate_cmd, "kwargs": {"name": "evaluate"}},
]
