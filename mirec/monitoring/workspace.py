"""Optional sink: add each window's Evidently snapshots to an Evidently workspace, for its UI.

A local folder (`Workspace(path)`; browse with `evidently ui --workspace PATH`) or, when `target` is an
http(s) URL, a running Evidently UI service (`RemoteWorkspace(url)`). One project per (model, arm),
named "mirec <model>/<arm>", created on first use.
"""

from __future__ import annotations

from pathlib import Path


def _workspace(target: str | Path):
    t = str(target)
    if t.startswith(("http://", "https://")):
        from evidently.ui.workspace import RemoteWorkspace

        return RemoteWorkspace(t)
    from evidently.ui.workspace import Workspace

    Path(t).mkdir(parents=True, exist_ok=True)
    return Workspace(t)


def add_to_workspace(target: str | Path, snapshots: list[tuple[str, str, object]], window: dict) -> dict:
    """snapshots: [(model, arm, Snapshot or {dataset level: Snapshot})] -> {"ok": True, "runs": [{project, snapshot_id}]}."""
    ws = _workspace(target)
    runs = []
    for model, arm, snaps in snapshots:
        name = f"mirec {model}/{arm or '-'}"
        found = ws.search_project(name)
        project = found[0] if found else ws.create_project(name, description="mirec monitor windows (Evidently snapshots)")
        for level, snap in (snaps.items() if isinstance(snaps, dict) else [("", snaps)]):
            ref = ws.add_run(project.id, snap, name=f"{model}/{arm or '-'} {window['name']}" + (f" ({level})" if level else ""))
            runs.append({"project": name, "project_id": str(project.id), "level": level,
                         "snapshot_id": str(getattr(ref, "id", ref))})
    return {"ok": True, "target": str(target), "runs": runs}
