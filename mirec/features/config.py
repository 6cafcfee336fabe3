"""Where the feature repo, Feast's own files and the derived sources live; which profile is used.

Resolution order for every setting: explicit argument > environment variable > default.

| setting     | env var                  | default                          |
|-------------|--------------------------|----------------------------------|
| repo_path   | MIREC_FEAST_REPO         | feature_repo                     |
| profile     | MIREC_FEAST_PROFILE      | local                            |
| store_dir   | MIREC_FEAST_DIR          | <repo_path>/data                 |
| source_dir  | MIREC_FEAST_SOURCE_DIR   | <store_dir>/sources              |

`local` reads `<repo>/feature_store.yaml`, `production` reads `<repo>/feature_store.production.yaml`.
Both files use `${VAR}` placeholders that are filled from the environment plus the two defaults above;
a placeholder with no value is a ConfigError naming the variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
import yaml
from pydantic import Field

from mirec.config import StrictModel
from mirec.errors import ConfigError

PROFILES = {"local": "feature_store.yaml", "production": "feature_store.production.yaml"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FeaturesConfig(StrictModel):
    repo_path: str | None = None
    #: "local" | "production" (checked in resolved(), so that env and CLI values give the same ConfigError)
    profile: str | None = None
    store_dir: str | None = None
    source_dir: str | None = None
    #: L: how many recent items a snapshot keeps
    seq_len: int = Field(50, ge=1, le=10_000)
    #: W: the item popularity window, in days
    pop_window_days: int = Field(7, ge=1, le=365)

    def resolved(self) -> "FeaturesConfig":
        """A copy with every path/profile filled from the environment or the defaults."""
        env = os.environ
        repo = Path(self.repo_path or env.get("MIREC_FEAST_REPO") or "feature_repo").resolve()
        profile = self.profile or env.get("MIREC_FEAST_PROFILE") or "local"
        if profile not in PROFILES:
            raise ConfigError(f"unknown feature store profile {profile!r} (MIREC_FEAST_PROFILE?); "
                              f"use one of {sorted(PROFILES)}")
        store = self.store_dir or env.get("MIREC_FEAST_DIR") or str(repo / "data")
        if "://" not in store:
            store = str(Path(store).resolve())
        source = self.source_dir or env.get("MIREC_FEAST_SOURCE_DIR") or f"{store.rstrip('/')}/sources"
        if "://" not in source:
            source = str(Path(source).resolve())
        return self.model_copy(update={"repo_path": str(repo), "profile": profile, "store_dir": store,
                                       "source_dir": source})

    @property
    def yaml_path(self) -> Path:
        c = self.resolved()
        return Path(c.repo_path) / PROFILES[c.profile]

    def variables(self) -> dict[str, str]:
        c = self.resolved()
        return {**os.environ, "MIREC_FEAST_DIR": c.store_dir, "MIREC_FEAST_SOURCE_DIR": c.source_dir}


def render_store_yaml(cfg: FeaturesConfig) -> dict:
    """The profile's feature_store YAML as a dict, `${VAR}` filled in; ConfigError on any problem."""
    c = cfg.resolved()
    repo = Path(c.repo_path)
    if not repo.is_dir():
        raise ConfigError(f"feature repo not found: {repo} (pass --repo or set MIREC_FEAST_REPO)")
    path = repo / PROFILES[c.profile]
    if not path.is_file():
        raise ConfigError(f"feature repo {repo} has no {PROFILES[c.profile]} for profile {c.profile!r}")
    variables = c.variables()
    text = path.read_text()
    missing = sorted({m for m in _VAR.findall(text) if not variables.get(m)})
    if missing:
        raise ConfigError(f"{path.name} (profile {c.profile!r}) needs environment variable(s) "
                          f"{', '.join(missing)}; see docs/features.md")
    text = _VAR.sub(lambda m: variables[m.group(1)], text)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return raw
