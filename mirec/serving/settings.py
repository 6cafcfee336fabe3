"""Settings of the recommendation API (`mirec api --settings FILE`), the YAML of docs/CONTRACTS.md:

    torchserve_url: http://127.0.0.1:8080      # inference API
    torchserve_token_file: null                # TorchServe key_file.json (token auth on in prod)
    experiment: {salt: "exp-1", arms: [{name: A, model: mirec_a, weight: 0.5}, {name: B, model: mirec_b, weight: 0.5}]}
    log_path: logs/served.jsonl
    feast: {repo_path: null, timeout_ms: 50}
    timeout_ms: 1000
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from mirec.config import StrictModel, load_yaml_config
from mirec.errors import ConfigError
from mirec.serving.ab import Arm, Experiment


class FeastSettings(StrictModel):
    repo_path: str | None = None
    timeout_ms: int = Field(50, ge=1)


class ApiSettings(StrictModel):
    torchserve_url: str = "http://127.0.0.1:8080"
    torchserve_token_file: str | None = None
    experiment: Experiment = Field(default_factory=lambda: Experiment(
        salt="exp-1", arms=[Arm(name="A", model="mirec_a", weight=0.5), Arm(name="B", model="mirec_b", weight=0.5)]))
    log_path: str | None = "logs/served.jsonl"
    feast: FeastSettings = Field(default_factory=FeastSettings)
    timeout_ms: int = Field(1000, ge=1)

    def inference_token(self) -> str | None:
        """The TorchServe inference key from key_file.json (None when token auth is off)."""
        if not self.torchserve_token_file:
            return None
        p = Path(self.torchserve_token_file)
        try:
            keys = json.loads(p.read_text())
            return keys["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the TorchServe inference key from {p}: {exc}") from None


def load_settings(path: str | Path | None, **overrides) -> ApiSettings:
    return load_yaml_config(ApiSettings, path, **overrides)
