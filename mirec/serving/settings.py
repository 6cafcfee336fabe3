"""Settings of the recommendation API (`mirec api --settings FILE`), the YAML of docs/CONTRACTS.md:

    torchserve_url: http://127.0.0.1:8080      # inference API
    upstream_protocol: torchserve              # torchserve | kserve-v1 | kserve-v2 (mirec.serving.kserve)
    torchserve_management_url: null            # management API (readiness: workers per arm); null = inference /ping
    torchserve_token_file: null                # TorchServe key_file.json (token auth on in prod)
    experiment: {salt: "exp-1", arms: [{name: A, model: mirec_a, weight: 0.5}, {name: B, model: mirec_b, weight: 0.5}]}
    log_path: logs/served.jsonl
    log_rotation: {hourly: true, max_bytes: 104857600, retention_hours: 336}
    feast: {repo_path: null, timeout_ms: 50}
    timeout_ms: 1000                           # the API's deadline for one TorchServe call
    limits: {max_body_bytes: 1048576, max_request_id_len: 128, max_in_flight: 64, retry_after_s: 1}
    readiness_cache_ms: 1000
    docs: false                                # /docs, /redoc, /openapi.json
    auth: {api_keys_file: null, rate_limit_per_s: null, rate_limit_burst: 20}
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from mirec.config import StrictModel, load_yaml_config
from mirec.errors import ConfigError
from mirec.serving.ab import Arm, Experiment
from mirec.serving.warmup import WarmupSettings


class FeastSettings(StrictModel):
    repo_path: str | None = None
    timeout_ms: int = Field(50, ge=1)


class LogRotation(StrictModel):
    """Layout and rotation of the served log and of the feedback log beside it (`mirec.serving.logwriter`, one
    writer for both). `hourly` (default): one file per UTC hour of the lines' own `ts`,
    `<log_path>.<YYYY-MM-DDTHH>` (the monitor reads only its window's files), split above `max_bytes`, rotated
    files older than `retention_hours` deleted. `hourly: false`: a new file when the current one would pass
    `max_bytes` or is `every_s` old, named `<log_path>.<UTC time of rotation>`. `backup_count` > 0 keeps only
    that many rotated files. 0 turns a trigger off."""

    hourly: bool = True
    max_bytes: int = Field(100 * 1024 * 1024, ge=0)
    #: single layout only (hourly rotates at each hour)
    every_s: int = Field(86400, ge=0)
    backup_count: int = Field(0, ge=0)
    #: hourly layout: 14 days of hourly files
    retention_hours: int = Field(336, ge=0)


class Limits(StrictModel):
    #: request bodies larger than this get 413 before they are read whole (Content-Length, then counted while
    #: streaming, for chunked bodies)
    max_body_bytes: int = Field(1 << 20, ge=1)
    #: a longer X-Request-Id (or one with characters outside printable ASCII) is a 400
    max_request_id_len: int = Field(128, ge=1)
    #: /recommend requests handled at once; more get 429 with Retry-After (load shedding)
    max_in_flight: int = Field(64, ge=1)
    retry_after_s: int = Field(1, ge=0)


class AuthSettings(StrictModel):
    """Optional access control. `api_keys_file`: a JSON or YAML mapping {client name: key} (e.g. a mounted
    Kubernetes Secret); then every request but /healthz, /readyz and /metrics needs `Authorization: Bearer <key>`
    or `X-API-Key: <key>`. `rate_limit_per_s`: per client (the key's name; the peer address without keys) a token
    bucket of `rate_limit_burst` requests refilled at this rate; over it, 429 with Retry-After."""

    api_keys_file: str | None = None
    rate_limit_per_s: float | None = Field(None, gt=0)
    rate_limit_burst: int = Field(20, ge=1)

    def load_keys(self) -> dict[str, str]:
        """{key: client name} from `api_keys_file` ({} when unset)."""
        if not self.api_keys_file:
            return {}
        import yaml

        p = Path(self.api_keys_file)
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the API keys from {p}: {exc}") from None
        if not isinstance(data, dict) or not data or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) >= 16 for k, v in data.items()):
            raise ConfigError(f"{p} must map client names to keys of at least 16 characters, e.g. {{ui: <key>}}")
        return {v: k for k, v in data.items()}

    @staticmethod
    def match(keys: dict[str, str], presented: str | None) -> str | None:
        """The client name of `presented` (constant-time comparison against every key), else None."""
        if not presented:
            return None
        found = None
        for key, name in keys.items():
            if hmac.compare_digest(key.encode(), presented.encode("utf-8", "surrogateescape")):
                found = name
        return found


class ApiSettings(StrictModel):
    torchserve_url: str = "http://127.0.0.1:8080"
    #: how the API calls the model server (`mirec.serving.kserve`): `torchserve` POST /predictions/<model> with the
    #: request as it came; `kserve-v1` POST /v1/models/<model>:predict with {"instances": [request]}; `kserve-v2`
    #: POST /v2/models/<model>/infer (Open Inference Protocol, a BYTES tensor `request`). Answers and the served log
    #: are the same in all three. KServe: match the InferenceService's protocolVersion (v1 / v2).
    upstream_protocol: Literal["torchserve", "kserve-v1", "kserve-v2"] = "torchserve"
    #: TorchServe's management API, for /readyz (workers READY per arm). Token auth on: the management key
    #: from `torchserve_token_file`. null: /readyz asks the inference API's /ping instead (KServe: the
    #: predictor's management API is not reachable from the API pod).
    torchserve_management_url: str | None = None
    torchserve_token_file: str | None = None
    experiment: Experiment = Field(default_factory=lambda: Experiment(
        salt="exp-1", arms=[Arm(name="A", model="mirec_a", weight=0.5), Arm(name="B", model="mirec_b", weight=0.5)]))
    log_path: str | None = "logs/served.jsonl"
    log_rotation: LogRotation = Field(default_factory=LogRotation)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    #: the API's deadline for one TorchServe call; keep the MARs' client_timeout_ms (`mirec package`) equal to it
    timeout_ms: int = Field(1000, ge=1)
    limits: Limits = Field(default_factory=Limits)
    readiness_cache_ms: int = Field(1000, ge=0)
    #: FastAPI's /docs, /redoc and /openapi.json (off unless asked for; `mirec serve` turns them on locally)
    docs: bool = False
    auth: AuthSettings = Field(default_factory=AuthSettings)
    #: calls sent to every arm's model before /readyz says ready (mirec.serving.warmup: a cold Java frontend is
    #: ~2x slower per request); off here, on in `mirec serve` and the Helm chart
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)

    def _keys(self) -> dict | None:
        if not self.torchserve_token_file:
            return None
        p = Path(self.torchserve_token_file)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the TorchServe keys from {p}: {exc}") from None

    def inference_token(self) -> str | None:
        """The TorchServe inference key from key_file.json (None when token auth is off)."""
        keys = self._keys()
        if keys is None:
            return None
        try:
            return keys["inference"]["key"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the TorchServe inference key from {self.torchserve_token_file}: "
                              f"{exc}") from None

    def management_token(self) -> str | None:
        """The TorchServe management key from key_file.json (None when token auth is off or it is unreadable)."""
        try:
            keys = self._keys()
            return None if keys is None else keys["management"]["key"]
        except (ConfigError, KeyError, TypeError):
            return None


def load_settings(path: str | Path | None, **overrides) -> ApiSettings:
    return load_yaml_config(ApiSettings, path, **overrides)
