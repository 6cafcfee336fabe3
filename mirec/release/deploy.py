"""The pipeline's deploy step: lay the gated candidates out as one release (mirec.release.store), publish it to the
release store, and write the Helm values that point the chart at it.

values-release.yaml carries only what a release decides: `release.uri`, the model versions (name, MAR, version,
sha256) and the A/B split. Per-model TorchServe settings (workers, batch size, timeouts) stay in the chosen
profile's `torchserve.modelDefaults`, which the release file does not touch, so
`helm upgrade -f values-production.yaml -f values-release.yaml` keeps production's settings (Helm replaces lists,
merges maps: the release's models list has no settings to replace them with).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from mirec.errors import ConfigError, MirecError
from mirec.release.store import build_manifest, publish_release, release_uri, write_manifest
from mirec.stepio import fresh_dir, now_utc, read_step, write_step

VALUES_FILE = "values-release.yaml"


KEEP_PROFILE_SPLIT = -1.0  # experiment_split: the release carries no arms, the profile's split stays


def split_arms(model_names: dict[str, str], experiment_split: float) -> list[dict]:
    """api.settings.experiment.arms: A gets experiment_split of the traffic, B the rest; a single passing candidate
    gets all of it. model_names: candidate -> served model name."""
    if not 0.0 <= float(experiment_split) <= 1.0:
        raise ConfigError(f"experiment_split must be in [0, 1] (or {KEEP_PROFILE_SPLIT:g}: keep the profile's "
                          f"split), got {experiment_split}")
    weights = {"A": float(experiment_split), "B": 1.0 - float(experiment_split)}
    total = sum(weights.get(n, 0.0) for n in model_names) or 1.0
    arms = [{"name": n, "model": m, "weight": round(weights.get(n, 0.0) / total, 6)}
            for n, m in sorted(model_names.items())]
    if all(a["weight"] == 0 for a in arms):
        for a in arms:
            a["weight"] = round(1.0 / len(arms), 6)
    return arms


def release_values(models: list[dict], arms: list[dict], uri: str = "", mar_base_url: str = "") -> dict:
    """The chart values of a release: model versions + split (+ where the chart reads the models from)."""
    values: dict = {"torchserve": {"models": models}}
    if arms:  # no arms: the profile's A/B split stays (Helm would replace its list)
        values["api"] = {"settings": {"experiment": {"arms": arms}}}
    if uri:
        values["release"] = {"uri": uri}
        values["torchserve"]["modelStore"] = {"type": "release"}
    elif mar_base_url:
        values["torchserve"]["modelStore"] = {"type": "url", "url": {"baseUrl": mar_base_url}}
    return values


def lay_out_release(package_dir: Path, reference_dir: Path | None, shipped: dict, dest: Path) -> None:
    """model-store/, config/, package.json from the package step; reference/<model>/ from the reference step."""
    (dest / "model-store").mkdir(parents=True)
    for p in shipped.values():
        shutil.copy2(package_dir / "model-store" / p["mar"], dest / "model-store" / p["mar"])
    if (package_dir / "config").is_dir():
        shutil.copytree(package_dir / "config", dest / "config")
    if (package_dir / "package.json").is_file():
        shutil.copy2(package_dir / "package.json", dest / "package.json")
    if reference_dir is None:
        return
    ref = read_step(reference_dir)
    if ref.get("status") == "ok":
        for r in ref["references"].values():
            shutil.copytree(reference_dir / r["dir"], dest / "reference" / r["model_name"])


def _mar_sha256(package_dir: Path) -> dict[str, str]:
    f = package_dir / "package.json"
    if not f.is_file():
        return {}
    pkg = json.loads(f.read_text())
    entries = pkg.get("models") or pkg.get("candidates") or []
    return {e["name"]: e["sha256"] for e in entries if isinstance(e, dict) and e.get("sha256") and e.get("name")}


def deploy(package_dir: str | Path, out_dir: str | Path, experiment_split: float = 0.5, mode: str = "helm-values",
           torchserve_management_url: str = "", mar_base_url: str = "",
           token_env: str = "TORCHSERVE_MANAGEMENT_TOKEN", reference_dir: str | Path | None = None,
           release_store: str = "", release_name: str = "mirec", overwrite: bool = False) -> dict:
    """Ship the packaged candidates:
      - out_dir/release/ = the release folder (model-store, config, package.json, reference, values, manifest);
      - release_store set: published to <release_store>/<release_name>/<version>/ (the URI the chart reads);
      - out_dir/values-release.yaml (also inside the release) for `helm upgrade -f <profile> -f values-release.yaml`;
      - mode torchserve: also register every MAR with a running TorchServe through its management API
        (POST /models?url=...; token from $TORCHSERVE_MANAGEMENT_TOKEN) and make it the default version."""
    if mode not in ("helm-values", "torchserve"):
        raise ConfigError(f"deploy mode must be 'helm-values' or 'torchserve', not {mode!r}")
    keep_split = float(experiment_split) == KEEP_PROFILE_SPLIT
    if not keep_split and not 0.0 <= float(experiment_split) <= 1.0:
        raise ConfigError(f"experiment_split must be in [0, 1] (or {KEEP_PROFILE_SPLIT:g}: keep the profile's "
                          f"split), got {experiment_split}")
    out = fresh_dir(out_dir)
    pkg = read_step(package_dir)
    if pkg.get("status") != "ok":
        return write_step(out, "deploy", {"status": "skipped", "reason": "no candidate passed the gate"})
    package_dir = Path(package_dir)
    shipped = dict(pkg["mars"])
    version = str(pkg.get("version") or next(iter(shipped.values()))["version"])
    uri = release_uri(release_store, release_name, version) if release_store else ""
    sums = _mar_sha256(package_dir)
    models = []
    for _, p in sorted(shipped.items()):
        entry = {"name": p["model_name"], "marFile": p["mar"], "version": p["version"]}
        digest = sums.get(p["model_name"])
        if digest:
            entry["sha256"] = digest
        models.append(entry)
    names = {n: p["model_name"] for n, p in shipped.items()}
    if keep_split and len(names) < 2:  # the profile's arms name both models: a single model needs its own arms
        keep_split = False
        experiment_split = 1.0
    arms = [] if keep_split else split_arms(names, experiment_split)
    values = release_values(models, arms, uri=uri, mar_base_url=mar_base_url)
    text = ("# Written by the mirec training pipeline (deploy step): this release's model versions and A/B split.\n"
            "# helm upgrade --install mirec charts/mirec -f charts/mirec/values-production.yaml -f values-release.yaml\n"
            + yaml.safe_dump(values, sort_keys=False))
    rel = out / "release"
    lay_out_release(package_dir, Path(reference_dir) if reference_dir else None, shipped, rel)
    (rel / VALUES_FILE).write_text(text)
    (out / VALUES_FILE).write_text(text)
    manifest = build_manifest(rel, release_name, version, now_utc(), models=models, arms=arms)
    for m in models:  # the manifest's own sha256 of each MAR is the one the fetcher verifies
        m.setdefault("sha256", manifest.by_path()[f"model-store/{m['marFile']}"].sha256)
    write_manifest(rel, manifest)
    if uri:
        publish_release(rel, uri, overwrite=overwrite)
    registered = []
    if mode == "torchserve":
        registered = _register_torchserve({n: {**p, "dir": str(package_dir / "model-store")} for n, p in shipped.items()},
                                          torchserve_management_url, mar_base_url, rel / "model-store",
                                          os.environ.get(token_env, ""))
    info = {"status": "ok", "mode": mode, "arms": arms, "models": models, "registered": registered,
            "version": version, "release_uri": uri, "published": bool(uri), "values_file": VALUES_FILE,
            "files": len(manifest.files), "has_reference": (rel / "reference").is_dir()}
    return write_step(out, "deploy", info)


def _register_torchserve(shipped: dict, url: str, mar_base_url: str, mars_dir: Path, token: str) -> list[dict]:
    import requests

    if not url:
        raise ConfigError("deploy mode 'torchserve' needs torchserve_management_url (e.g. http://torchserve:8081)")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    done = []
    for _, p in sorted(shipped.items()):
        mar_url = (f"{mar_base_url.rstrip('/')}/{p['mar']}" if mar_base_url
                   else (mars_dir / p["mar"]).resolve().as_uri())  # file:// (a server on this machine/volume)
        try:
            r = requests.post(f"{url.rstrip('/')}/models", params={"url": mar_url, "model_name": p["model_name"],
                              "initial_workers": 1, "synchronous": "true"}, headers=headers, timeout=300)
            if r.status_code >= 300:
                raise MirecError(f"TorchServe refused {p['model_name']} ({r.status_code}): {r.text[:300]}")
            r2 = requests.put(f"{url.rstrip('/')}/models/{p['model_name']}/{p['version']}/set-default",
                              headers=headers, timeout=60)
            if r2.status_code >= 300:
                raise MirecError(f"TorchServe set-default {p['model_name']}/{p['version']} failed "
                                 f"({r2.status_code}): {r2.text[:300]}")
        except requests.RequestException as exc:
            raise MirecError(f"TorchServe management API at {url} unreachable: {exc}") from None
        done.append({"model": p["model_name"], "version": p["version"], "url": mar_url})
    return done


