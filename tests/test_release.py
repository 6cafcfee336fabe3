"""The release store (issue 16, item 1): publish -> fetch with every file verified, on file:// and on a real local
S3-compatible server (moto's server, started by this module: a STAND-IN FOR S3, see tests/servers.py), the deploy
step's release layout and values, and the `mirec release` CLI the chart's fetchers run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirec import steps
from mirec.errors import ConfigError
from mirec.release import (ReleaseError, build_manifest, fetch_release, publish_release, read_manifest, release_uri,
                           release_values, write_manifest)
from mirec.release.store import MANIFEST, SUMS, sha256_file
from servers import S3Server

REPO = Path(__file__).resolve().parents[1]
BUCKET = "mirec-releases"


def _release_dir(root: Path) -> Path:
    rel = root / "release"
    (rel / "model-store").mkdir(parents=True)
    (rel / "model-store" / "mirec_a.mar").write_bytes(os.urandom(200_000))  # > one s3fs block for multipart
    (rel / "model-store" / "mirec_b.mar").write_bytes(b"B" * 1000)
    (rel / "reference" / "mirec_a").mkdir(parents=True)
    (rel / "reference" / "mirec_a" / "summary.json").write_text('{"n_records": 3}')
    (rel / "package.json").write_text("{}")
    write_manifest(rel, build_manifest(rel, "mirec", "20261201", "2026-12-01T00:00:00+00:00",
                                       models=[{"name": "mirec_a", "marFile": "mirec_a.mar", "version": "20261201"}]))
    return rel


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    why = S3Server.available()
    if why:
        pytest.skip(why)
    with S3Server.with_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as srv:
        yield srv


def _stores(tmp_path: Path, s3: S3Server | None) -> str:
    return f"s3://{BUCKET}/{tmp_path.name}" if s3 else (tmp_path / "store").as_uri()


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_publish_then_fetch_verifies_every_file(backend, tmp_path, request):
    s3 = request.getfixturevalue("s3") if backend == "s3" else None
    rel = _release_dir(tmp_path)
    uri = release_uri(_stores(tmp_path, s3), "mirec", "20261201")
    m = publish_release(rel, uri)
    assert read_manifest(uri).model_dump() == m.model_dump()
    got = fetch_release(uri, tmp_path / "all")
    for f in got.files:
        assert sha256_file(tmp_path / "all" / f.path) == f.sha256
    # the chart's fetcher: only model-store/, straight into the model store folder
    fetch_release(uri, tmp_path / "ms", parts=["model-store"], strip_part=True)
    assert sorted(p.name for p in (tmp_path / "ms").iterdir()) == ["mirec_a.mar", "mirec_b.mar"]
    fetch_release(uri, tmp_path / "ref", parts=["reference"])
    assert (tmp_path / "ref" / "reference" / "mirec_a" / "summary.json").is_file()
    with pytest.raises(ReleaseError, match="exists already"):  # a version is published once
        publish_release(rel, uri)
    with pytest.raises(ReleaseError, match="has no monitoring"):
        fetch_release(uri, tmp_path / "x", parts=["monitoring"])


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_tampered_or_missing_file_is_refused_by_name(backend, tmp_path, request):
    s3 = request.getfixturevalue("s3") if backend == "s3" else None
    rel = _release_dir(tmp_path)
    uri = release_uri(_stores(tmp_path, s3), "mirec", "1")
    publish_release(rel, uri)
    from mirec.release.store import open_fs

    fs, base = open_fs(uri)
    with fs.open(f"{base}/model-store/mirec_b.mar", "wb") as f:  # truncated / replaced in the store
        f.write(b"B" * 10)
    with pytest.raises(ReleaseError, match=r"checksum mismatch.*model-store/mirec_b\.mar"):
        fetch_release(uri, tmp_path / "ms", parts=["model-store"], strip_part=True)
    assert not (tmp_path / "ms" / "mirec_b.mar").exists() and not (tmp_path / "ms" / "mirec_b.mar.part").exists()
    fs.rm(f"{base}/package.json")
    with pytest.raises(ReleaseError, match="incomplete: package.json"):
        fetch_release(uri, tmp_path / "p", parts=["package.json"])
    with pytest.raises(ReleaseError, match="no release at"):
        fetch_release(uri + "-nope", tmp_path / "n")


def test_manifest_and_sha256sums_agree(tmp_path):
    rel = _release_dir(tmp_path)
    m = json.loads((rel / MANIFEST).read_text())
    sums = dict(reversed(line.split("  ", 1)) for line in (rel / SUMS).read_text().splitlines())
    assert sums == {f["path"]: f["sha256"] for f in m["files"]}
    # `sha256sum -c` (what an operator can run on a downloaded release) accepts the file
    if subprocess.run(["sh", "-c", "command -v sha256sum"], capture_output=True).returncode == 0:
        subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=rel, check=True)


def test_release_uri_refuses_bad_parts():
    assert release_uri("s3://b/p/", "mirec", "v1") == "s3://b/p/mirec/v1"
    for store, name, version in (("", "mirec", "1"), ("s3://b", "a/b", "1"), ("s3://b", "mirec", "..")):
        with pytest.raises(ConfigError):
            release_uri(store, name, version)


def test_cli_fetch_exit_2_with_one_line_naming_the_file(tmp_path):
    rel = _release_dir(tmp_path)
    uri = (tmp_path / "store" / "mirec" / "1").as_uri()
    publish_release(rel, uri)
    (tmp_path / "store" / "mirec" / "1" / "model-store" / "mirec_a.mar").write_bytes(b"x")
    exe = str(Path(sys.executable).with_name("mirec"))
    ok = subprocess.run([exe, "release", "fetch", "--uri", uri, "--part", "reference", "--dest", str(tmp_path / "r")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr
    bad = subprocess.run([exe, "release", "fetch", "--part", "model-store", "--strip", "--dest", str(tmp_path / "m")],
                         capture_output=True, text=True, env={**os.environ, "MIREC_RELEASE_URI": uri})
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "model-store/mirec_a.mar" in bad.stderr, bad.stderr


# ---- the deploy step ----------------------------------------------------------------------------------------
def _fake_package(root: Path, names=("A", "B")) -> tuple[Path, Path]:
    """A package step's output (model-store + package.json with sha256) and a reference step's output."""
    pkg = root / "pkg"
    (pkg / "model-store").mkdir(parents=True)
    (pkg / "config").mkdir()
    (pkg / "config" / "config.properties").write_text("inference_address=http://0.0.0.0:8080\n")
    mars, cands = {}, []
    for n in names:
        mar = pkg / "model-store" / f"mirec_{n.lower()}.mar"
        mar.write_bytes(f"MAR {n}".encode() * 100)
        mars[n] = {"candidate": n, "model_name": f"mirec_{n.lower()}", "version": "20261201", "mar": mar.name,
                   "mar_bytes": mar.stat().st_size}
        cands.append({"name": f"mirec_{n.lower()}", "sha256": sha256_file(mar)})
    (pkg / "package.json").write_text(json.dumps({"candidates": cands}))
    (pkg / steps.STEP_FILE).write_text(json.dumps({"step": "package_candidates", "status": "ok", "version": "20261201",
                                                   "mars": mars}))
    ref = root / "ref"
    refs = {}
    for n in names:
        (ref / f"mirec_{n.lower()}").mkdir(parents=True)
        (ref / f"mirec_{n.lower()}" / "summary.json").write_text("{}")
        refs[n] = {"dir": f"mirec_{n.lower()}", "model_name": f"mirec_{n.lower()}", "version": "20261201"}
    (ref / steps.STEP_FILE).write_text(json.dumps({"step": "build_monitoring_reference", "status": "ok",
                                                   "references": refs}))
    return pkg, ref


def test_deploy_publishes_the_release_and_writes_only_versions_and_split(tmp_path, s3):
    pkg, ref = _fake_package(tmp_path)
    info = steps.deploy(pkg, tmp_path / "dep", experiment_split=0.9, reference_dir=ref,
                        release_store=f"s3://{BUCKET}/deploy-test", release_name="mirec")
    uri = f"s3://{BUCKET}/deploy-test/mirec/20261201"
    assert info["published"] and info["release_uri"] == uri and info["has_reference"]
    values = yaml.safe_load((tmp_path / "dep" / "values-release.yaml").read_text())
    assert values == release_values(info["models"], info["arms"], uri=uri)
    assert set(values) == {"release", "torchserve", "api"}
    assert set(values["torchserve"]) == {"models", "modelStore"}
    for m in values["torchserve"]["models"]:  # versions only: the profile keeps workers/batch/timeouts
        assert set(m) == {"name", "marFile", "version", "sha256"}
    assert [a["weight"] for a in values["api"]["settings"]["experiment"]["arms"]] == [0.9, 0.1]
    m = read_manifest(uri)
    paths = {f.path for f in m.files}
    assert {"model-store/mirec_a.mar", "model-store/mirec_b.mar", "config/config.properties", "package.json",
            "reference/mirec_a/summary.json", "values-release.yaml"} <= paths
    assert {x["name"]: x["sha256"] for x in values["torchserve"]["models"]} == {
        "mirec_a": m.by_path()["model-store/mirec_a.mar"].sha256, "mirec_b": m.by_path()["model-store/mirec_b.mar"].sha256}
    fetch_release(uri, tmp_path / "got")  # the whole release verifies


def test_deploy_can_keep_the_profiles_split(tmp_path):
    pkg, ref = _fake_package(tmp_path)
    info = steps.deploy(pkg, tmp_path / "dep", experiment_split=-1, reference_dir=ref)
    values = yaml.safe_load((tmp_path / "dep" / "values-release.yaml").read_text())
    assert "api" not in values and info["arms"] == [] and not info["published"]
    one, ref1 = _fake_package(tmp_path / "one", names=("A",))  # one model: it needs its own arms
    info = steps.deploy(one, tmp_path / "dep1", experiment_split=-1, reference_dir=ref1)
    assert info["arms"] == [{"name": "A", "model": "mirec_a", "weight": 1.0}]
    with pytest.raises(ConfigError, match="experiment_split"):
        steps.deploy(pkg, tmp_path / "dep2", experiment_split=1.5)


def test_release_values_fixture_is_what_deploy_writes():
    """tests/fixtures/values-release.yaml (layered on production in the chart tests) has the deploy step's shape."""
    fixture = yaml.safe_load((REPO / "tests" / "fixtures" / "values-release.yaml").read_text())
    ts = fixture["torchserve"]
    assert fixture == release_values(ts["models"], fixture["api"]["settings"]["experiment"]["arms"],
                                     uri=fixture["release"]["uri"])
