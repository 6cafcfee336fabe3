"""docs/cluster.md names only things that exist (issue 16, item 6): repository files, chart values, pipeline
parameters, Secrets (and their keys) the code and the chart read, `mirec` commands, Dockerfile targets/arguments,
and the objects the chart renders for release `mirec`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "cluster.md").read_text()
TICKED = re.findall(r"`([^`\n]+)`", DOC)
BLOCKS = "\n".join(re.findall(r"```bash\n(.*?)```", DOC, flags=re.S))
TOP = ("charts/", "pipelines/", "components/", "mirec/", "k8s/", "feature_repo/", "serving/", "monitoring/",
       "docs/", "scripts/", "tests/")


def _values() -> dict:
    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    base = yaml.safe_load((REPO / "charts" / "mirec" / "values.yaml").read_text())
    return merge(base, yaml.safe_load((REPO / "charts" / "mirec" / "values-production.yaml").read_text()))


def _has_key(values: dict, dotted: str) -> bool:
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_repository_file_named_exists():
    named = {t for t in TICKED if t.startswith(TOP) or t in ("Dockerfile", "requirements.lock")}
    named |= set(re.findall(r"(?:-f|apply -f)\s+((?:charts|k8s)/[\w./-]+)", BLOCKS))
    assert named, "the walkthrough names no file?"
    missing = sorted(n for n in named if not (REPO / n.split()[0]).exists())
    assert not missing, missing


def test_every_chart_value_named_exists():
    values = _values()
    roots = set(values)
    named = {t for t in TICKED if re.fullmatch(r"[a-zA-Z]+(\.[a-zA-Z0-9]+)+", t) and t.split(".")[0] in roots
             and not re.search(r"\.(json|yaml|mar|py|md)$", t)}  # release.json is a file of the release
    named |= {m.split("=")[0] for m in re.findall(r"--set(?:-json)?\s+'?([\w.]+=)", BLOCKS)}
    named = {n.rstrip("=") for n in named}
    assert {"release.uri", "release.credentialsSecret", "torchserve.modelDefaults"} <= named
    missing = sorted(n for n in named if not _has_key(values, n))
    assert not missing, missing


def _pipeline_params(name: str) -> dict:
    doc = next(yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text()))
    return doc["root"]["inputDefinitions"]["parameters"]


def test_every_pipeline_parameter_named_exists_with_a_description():
    table = re.search(r"\| parameter \| value \|\n\|---\|---\|\n(.*?)\n\n", DOC, flags=re.S).group(1)
    named = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert "release_store" in named and "image" in named
    for variant in ("training_pipeline", "training_pipeline_gpu", "training_pipeline_distributed"):
        params = _pipeline_params(variant)
        for p in named + ["data_format", "model_version", "distributed"]:
            assert p in params, (variant, p)
            assert params[p].get("description"), (variant, p)
    assert "artifacts_pvc" in _pipeline_params("monitoring_pipeline")


def _secrets_created() -> dict[str, dict[str, set[str]]]:
    """namespace -> secret -> keys, from the `kubectl -n NS create secret generic NAME --from-literal=K=...` lines."""
    out: dict[str, dict[str, set[str]]] = {}
    joined = BLOCKS.replace("\\\n", " ")
    for line in joined.splitlines():
        m = re.search(r"kubectl -n ([\w-]+) create secret (?:generic|docker-registry) ([\w-]+)(.*)", line)
        if m:
            keys = set(re.findall(r"--from-literal=([\w-]+)=", m.group(3)))
            out.setdefault(m.group(1), {})[m.group(2)] = keys
    return out


def test_secrets_are_the_ones_pipeline_and_chart_read():
    from pipelines import monitoring_pipeline as mp
    from pipelines import training_pipeline as tp

    made = _secrets_created()
    v = _values()
    pipeline_ns, chart_ns = made["kubeflow-user"], made["recsys"]
    assert pipeline_ns[tp.OBJECT_STORE_SECRET] <= set(tp.OBJECT_STORE_KEYS)
    assert pipeline_ns[tp.FEAST_SECRET] <= set(tp.FEAST_KEYS) and "MIREC_FEAST_REGISTRY_URL" in pipeline_ns[tp.FEAST_SECRET]
    assert _pipeline_params("training_pipeline")["image_pull_secret"]["defaultValue"] in pipeline_ns
    assert v["release"]["credentialsSecret"] in chart_ns
    assert chart_ns[v["release"]["credentialsSecret"]] <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    reg = v["feast"]["registryPasswordSecret"]
    assert chart_ns[reg["name"]] == {reg["key"]}
    redis = v["feast"]["onlineStore"]["redis"]["auth"]
    assert chart_ns[redis["existingSecret"]] == {redis["existingSecretKey"]}
    hook = v["monitoring"]["cronjob"]["webhook"]
    assert chart_ns[hook["existingSecret"]] == {hook["existingSecretKey"]}
    assert (mp.WEBHOOK_SECRET, mp.WEBHOOK_KEY) == (hook["existingSecret"], hook["existingSecretKey"])
    assert v["networkPolicy"]["feastClientsFrom"][0]["namespaceSelector"]["matchLabels"][
        "kubernetes.io/metadata.name"] == "kubeflow-user"
    assert v["feast"]["registry"]["registry_type"] == "sql"


def _cli_commands() -> set[str]:
    import typer

    from mirec.cli import app

    out = set()

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            out.add(f"{prefix} {name}".strip())
            walk(sub, f"{prefix} {name}")

    walk(typer.main.get_command(app), "mirec")
    return out


def test_every_mirec_command_named_exists():
    cmds = _cli_commands()
    used = set()
    for line in BLOCKS.replace("\\\n", " ").splitlines() + [t for t in TICKED if t.startswith("mirec ")]:
        m = re.match(r"\s*mirec ((?:[a-z-]+)(?: [a-z-]+)?)", line)  # lines that run `mirec` itself
        if m and not line.strip().startswith("#"):
            words = m.group(1).split()
            full = "mirec " + " ".join(words)
            used.add(full if full in cmds else "mirec " + words[0])
    assert {"mirec release fetch", "mirec pipeline compile", "mirec pipeline render-pytorchjob"} <= used
    assert not sorted(u for u in used if u not in cmds), sorted(u for u in used if u not in cmds)


def test_dockerfile_targets_args_and_the_trainer_runtime():
    docker = (REPO / "Dockerfile").read_text()
    for target in re.findall(r"--target (\w+)", BLOCKS):
        assert re.search(rf"^FROM .* AS {target}$", docker, flags=re.M), target
    for arg in set(re.findall(r"--build-arg (\w+)=", BLOCKS)) | {"DEV_ONLY"}:
        assert re.search(rf"^ARG {arg}\b", docker, flags=re.M), arg
    from mirec.launch import LaunchConfig

    assert f"`{LaunchConfig().runtime}`" in DOC


def test_the_objects_the_commands_name_are_rendered(tmp_path):
    helm = REPO / ".tools" / "bin" / "helm"
    if not helm.exists():
        pytest.skip("helm not installed (scripts/get-helm-tools.sh)")
    rel = REPO / "tests" / "fixtures" / "values-release.yaml"
    out = subprocess.run([str(helm), "template", "mirec", str(REPO / "charts" / "mirec"), "-n", "recsys",
                          "-f", str(REPO / "charts" / "mirec" / "values-production.yaml"), "-f", str(rel)],
                         capture_output=True, text=True, check=True, env={**os.environ, "KUBECONFIG": os.devnull})
    names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    for kind, name in re.findall(r"(deploy|cronjob|job)/([\w-]+)", BLOCKS):
        if kind == "job":
            continue  # created by the command itself
        assert ({"deploy": "Deployment", "cronjob": "CronJob"}[kind], name) in names, (kind, name)
    # the CronJob's init container name used in `kubectl logs -c fetch-reference`
    assert "-c fetch-reference" in BLOCKS and "name: fetch-reference" in out.stdout
    claim = re.search(r"`artifacts_pvc` = `([\w-]+)`", DOC).group(1)
    assert ("PersistentVolumeClaim", claim) in names
