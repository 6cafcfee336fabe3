"""Model checkpoints on disk: `model.pt` (a state_dict) + `model_config.json` (+ items.parquet).

Below training, retrieval, evaluation and serving, which all read checkpoints: a module of the models layer,
so that none of them has to import the training loop (mirec.train re-exports both functions).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mirec.models import ModelConfig, MultiInterestModel, build

MODEL_FILE, MODEL_CONFIG = "model.pt", "model_config.json"


def save_checkpoint(model: MultiInterestModel, out_dir: str | Path, items_src: Path | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(sd, out_dir / MODEL_FILE)
    (out_dir / MODEL_CONFIG).write_text(model.cfg.model_dump_json(indent=2))
    if items_src is not None and items_src.exists() and not (out_dir / "items.parquet").exists():
        shutil.copy(items_src, out_dir / "items.parquet")
    return out_dir


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MultiInterestModel, ModelConfig]:
    d = Path(checkpoint_dir)
    raw = json.loads((d / MODEL_CONFIG).read_text())
    raw.setdefault("similarity", "dot")  # checkpoints written before `similarity` existed scored by inner product
    cfg = ModelConfig.model_validate(raw)
    model = build(cfg)
    model.load_state_dict(torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.to(device).eval(), cfg
