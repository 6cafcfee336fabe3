"""The release store: one published, versioned release per `<store>/<release>/<version>/`, on any fsspec
filesystem (s3:// through s3fs, gs://, az://, file:// or a plain path locally).

    <store>/<release>/<version>/
        model-store/<model>.mar          the MARs TorchServe loads (KServe: storageUri = this folder)
        config/config.properties         TorchServe's config for KServe's TorchServe layout
        package.json                     what `mirec package` wrote (versions, sha256 of the MARs)
        reference/<model>/...            the monitoring reference of each model (the monitoring CronJob reads it)
        values-release.yaml              the Helm values of this release (model versions + the A/B split)
        SHA256SUMS                       `sha256sum -c` lines of every file above
        release.json                     the manifest: every file with its sha256 and size; written last

A release is immutable: publishing onto an existing release.json fails unless `overwrite`. A reader
(`fetch_release`: the chart's fetcher, the monitoring job) downloads the parts it needs and verifies every file's
sha256 against release.json before anything uses it; a mismatch or a missing file fails with the file's name.
Credentials: the filesystem's own (S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the request signing of
botocore; AWS_ENDPOINT_URL for an S3-compatible endpoint such as MinIO), e.g. from a Kubernetes Secret as env.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from pydantic import BaseModel, Field

from mirec.errors import ConfigError, MirecError

MANIFEST = "release.json"
SUMS = "SHA256SUMS"
PARTS = ("model-store", "config", "reference", "package.json", "values-release.yaml")


class ReleaseError(MirecError):
    """A release cannot be published or read as it is (missing, incomplete, tampered)."""


class ReleaseFile(BaseModel):
    path: str  # relative to the release folder, "/"-separated
    sha256: str
    bytes: int


class ReleaseManifest(BaseModel):
    release: str
    version: str
    created: str
    files: list[ReleaseFile]
    models: list[dict] = Field(default_factory=list)  # {name, marFile, version, sha256}
    arms: list[dict] = Field(default_factory=list)  # the A/B split of this release

    def by_path(self) -> dict[str, ReleaseFile]:
        return {f.path: f for f in self.files}


def release_uri(store_uri: str, release: str, version: str) -> str:
    if not store_uri:
        raise ConfigError("release store URI is empty (e.g. s3://bucket/mirec or file:///srv/releases)")
    for part, what in ((release, "release name"), (version, "version")):
        if not part or "/" in part or part in (".", ".."):
            raise ConfigError(f"invalid {what} {part!r}: one non-empty path segment")
    return f"{store_uri.rstrip('/')}/{release}/{version}"


def storage_options(uri: str) -> dict:
    """fsspec options for `uri`: for s3:// the endpoint of an S3-compatible store ($AWS_ENDPOINT_URL_S3 or
    $AWS_ENDPOINT_URL); credentials come from the environment (botocore's chain)."""
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def open_fs(uri: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri, **storage_options(uri))
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open release store {uri}: {exc}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def build_manifest(local_dir: str | Path, release: str, version: str, created: str, models: list[dict] | None = None,
                   arms: list[dict] | None = None) -> ReleaseManifest:
    """The manifest of a release folder laid out locally (every file but the manifest and SHA256SUMS)."""
    root = Path(local_dir)
    files = [ReleaseFile(path=p.relative_to(root).as_posix(), sha256=sha256_file(p), bytes=p.stat().st_size)
             for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, SUMS)]
    if not files:
        raise ReleaseError(f"release folder {root} is empty")
    return ReleaseManifest(release=release, version=version, created=created, files=files, models=models or [],
                           arms=arms or [])


def write_manifest(local_dir: str | Path, manifest: ReleaseManifest) -> None:
    root = Path(local_dir)
    (root / SUMS).write_text("".join(f"{f.sha256}  {f.path}\n" for f in manifest.files))
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def publish_release(local_dir: str | Path, uri: str, overwrite: bool = False) -> ReleaseManifest:
    """Upload a release folder (with its release.json) to `uri`; release.json goes last, so that a reader never
    sees a manifest whose files are not all there. -> the manifest."""
    root = Path(local_dir)
    manifest = ReleaseManifest.model_validate_json((root / MANIFEST).read_text())
    fs, base = open_fs(uri)
    base = base.rstrip("/")
    if fs.exists(f"{base}/{MANIFEST}") and not overwrite:
        raise ReleaseError(f"release {uri} exists already (a version is published once; publish a new version)")
    try:
        for f in manifest.files:
            fs.makedirs(f"{base}/{f.path}".rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(root / f.path), f"{base}/{f.path}")
        fs.put_file(str(root / SUMS), f"{base}/{SUMS}")
        fs.put_file(str(root / MANIFEST), f"{base}/{MANIFEST}")
    except (OSError, PermissionError) as exc:
        raise ReleaseError(f"cannot publish to {uri}: {type(exc).__name__}: {exc}") from None
    return manifest


def read_manifest(uri: str) -> ReleaseManifest:
    fs, base = open_fs(uri)
    try:
        with fs.open(f"{base.rstrip('/')}/{MANIFEST}", "rb") as f:
            return ReleaseManifest.model_validate_json(f.read())
    except FileNotFoundError:
        raise ReleaseError(f"no release at {uri} ({MANIFEST} not found)") from None
    except (OSError, PermissionError) as exc:
        raise ReleaseError(f"cannot read {uri}/{MANIFEST}: {type(exc).__name__}: {exc}") from None


def latest_release(store_uri: str, release: str) -> str | None:
    """The URI of the newest version published under <store>/<release>/ (largest release.json `created`, then
    version), or None when none is. A version folder without release.json (a publish that did not finish) is
    skipped. The training gate's default champion (mirec.ab.gate.resolve_champion)."""
    fs, base = open_fs(f"{store_uri.rstrip('/')}/{release}")
    base = base.rstrip("/")
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        return None
    except (OSError, PermissionError) as exc:
        raise ReleaseError(f"cannot list {store_uri}/{release}: {type(exc).__name__}: {exc}") from None
    best: tuple[tuple[str, str], str] | None = None
    for e in entries:
        if e.get("type") != "directory":
            continue
        version = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
        try:
            uri = release_uri(store_uri, release, version)
            m = read_manifest(uri)
        except (ConfigError, ReleaseError):
            continue
        if best is None or (m.created, m.version) > best[0]:
            best = ((m.created, m.version), uri)
    return best[1] if best else None


def _selected(manifest: ReleaseManifest, parts: Sequence[str]) -> list[ReleaseFile]:
    if not parts:
        return list(manifest.files)
    unknown = [p for p in parts if not any(f.path == p or f.path.startswith(p.rstrip("/") + "/")
                                           for f in manifest.files)]
    if unknown:
        raise ReleaseError(f"release {manifest.release}/{manifest.version} has no {', '.join(unknown)}")
    return [f for f in manifest.files if any(f.path == p or f.path.startswith(p.rstrip("/") + "/") for p in parts)]


def fetch_release(uri: str, dest: str | Path, parts: Sequence[str] = (), strip_part: bool = False) -> ReleaseManifest:
    """Download the `parts` of the release at `uri` into `dest` (all of it when empty) and verify every file's
    sha256 against release.json; a file that does not match is deleted and the fetch fails naming it.
    strip_part: with one folder part (e.g. "model-store"), its files land directly in dest."""
    manifest = read_manifest(uri)
    files = _selected(manifest, parts)
    if strip_part and (len(parts) != 1 or any(f.path == parts[0] for f in files)):
        raise ConfigError("strip_part needs exactly one folder part (e.g. model-store)")
    fs, base = open_fs(uri)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    prefix = parts[0].rstrip("/") + "/" if strip_part else ""
    bad = []
    for f in files:
        target = out / f.path[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        try:
            fs.get_file(f"{base.rstrip('/')}/{f.path}", str(part))
        except FileNotFoundError:
            raise ReleaseError(f"release {uri} is incomplete: {f.path} is listed in {MANIFEST} but missing") from None
        got = sha256_file(part)
        if got != f.sha256:
            part.unlink()
            bad.append(f"{f.path} (sha256 {got[:12]}... != {f.sha256[:12]}...)")
            continue
        part.replace(target)
    if bad:
        raise ReleaseError(f"release {uri}: checksum mismatch, refusing to use: {'; '.join(bad)}")
    return manifest


def verify_dir(local_dir: str | Path, manifest: ReleaseManifest, paths: Iterable[str]) -> None:
    """Check files already on disk (e.g. a model store) against the manifest."""
    known = manifest.by_path()
    for rel in paths:
        f = known.get(rel)
        if f is None:
            raise ReleaseError(f"{rel} is not part of release {manifest.release}/{manifest.version}")
        got = sha256_file(Path(local_dir) / rel)
        if got != f.sha256:
            raise ReleaseError(f"{rel}: sha256 {got} does not match the release's {f.sha256}")
