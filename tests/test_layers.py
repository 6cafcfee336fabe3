"""The layer rule of docs/DESIGN (issue 16, item 7): a module imports only from its own layer or below, and no two
modules import each other (directly or round a longer circle). Every `import` counts, at module level or inside a
function (a lazy import is still a dependency); only imports under `if TYPE_CHECKING:` (annotations) are exempt.

Layers, bottom up (a module's layer = its longest listed prefix):
  0 errors, config
  1 data, models, metrics, checkpoint
  2 retrieval, train, features, evaluate, examples   (evaluate is here, not above: training's early stopping
                                                      evaluates; evaluate reads checkpoints via mirec.checkpoint)
  3 serving, monitoring
  4 pipeline steps: steps, stepio, gate, reports, release, launch, tune; ab (A/B report + promotion)
  5 the engine adapters: mirec.cli, components/, pipelines/, serving/ (handler), monitoring/ (top-level folders)
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [
    ("mirec.errors", "mirec.config", "mirec"),  # "mirec": the package's __init__ (its version only)
    ("mirec.data", "mirec.models", "mirec.metrics", "mirec.checkpoint"),
    ("mirec.retrieval", "mirec.train", "mirec.features", "mirec.evaluate", "mirec.examples"),
    ("mirec.serving", "mirec.monitoring"),
    ("mirec.steps", "mirec.stepio", "mirec.gate", "mirec.reports", "mirec.release", "mirec.launch", "mirec.tune",
     "mirec.ab"),
    ("mirec.cli", "components", "pipelines", "serving", "monitoring"),
]
#: known violations, each with why it is still there; the test fails on any other (and on a fixed one left here)
ALLOWED: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int | None:
    best: tuple[int, str] | None = None
    for i, names in enumerate(LAYERS):
        for n in names:
            hit = module == n or ("." in n or n != "mirec") and module.startswith(n + ".")  # "mirec": itself only
            if hit and (best is None or len(n) > len(best[1])):
                best = (i, n)
    return best[0] if best else None


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(path: Path, package: str) -> set[str]:
    """Absolute names this file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in (*parts, base) if p)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _known(names: set[str], modules: set[str]) -> set[str]:
    """The project modules among imported names (`from mirec.x import f` -> mirec.x)."""
    return {n for n in names if n in modules}


def project_graph() -> dict[str, set[str]]:
    files = [p for p in REPO.joinpath("mirec").rglob("*.py")]
    for top in ("components", "pipelines", "serving", "monitoring"):
        files += [p for p in REPO.joinpath(top).rglob("*.py")]
    mods = {_module_name(p): p for p in files}
    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        graph[m] = _known(imports_of(p, pkg), set(mods)) - {m}
    return graph


def test_every_mirec_module_has_a_layer():
    missing = sorted(m for m in project_graph() if layer_of(m) is None)
    assert not missing, f"modules with no layer (add them to LAYERS in {__file__}): {missing}"


def test_no_module_imports_a_higher_layer():
    bad, seen = [], set()
    for m, deps in project_graph().items():
        for d in deps:
            if layer_of(d) > layer_of(m):
                key = (m, d)
                seen.add(key)
                if key not in ALLOWED:
                    bad.append(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"fixed violations still listed in ALLOWED: {stale}"


def test_no_import_circles_between_modules():
    """Tarjan's strongly connected components over module -> imported module (parent packages excluded: importing
    mirec.x.y runs mirec/x/__init__.py, which re-exporting its children is not a circle of design)."""
    graph = project_graph()
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    assert not sccs, f"import circles: {sccs}"


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a train-layer file importing the CLI is reported."""
    f = tmp_path / "fake.py"
    f.write_text("def main():\n    from mirec.cli.models import train_cmd\n")
    deps = imports_of(f, "mirec")
    assert "mirec.cli.models" in deps and layer_of("mirec.cli.models") > layer_of("mirec.train")
    g = tmp_path / "typed.py"
    g.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mirec.cli import app\n")
    assert "mirec.cli" not in imports_of(g, "mirec")
