"""Human-facing reports of the training pipeline: the candidate comparison (Markdown, HTML with the
accuracy-diversity plot), the metrics the Kubeflow UI shows, and the run summary printed after a local run.

Pure rendering: reads the gate decision and the step records, decides nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from mirec.stepio import CANDIDATES, DECISION_FILE, STEP_FILE
from mirec.stepio import num as _num

#: metrics shown in the comparison table and logged into the kfp Metrics artifacts (when present)
TABLE_METRICS = ["recall@20", "recall@50", "ndcg@20", "ndcg@50", "hitrate@50", "diversity@50", "ild@50",
                 "coverage@50", "gini@50", "interest_cos", "effective_interests", "single_interest_share",
                 "routing_entropy_norm"]


def comparison_table(decision: dict) -> str:
    names = list(decision["metrics"])
    present = [m for m in TABLE_METRICS if any(_num(decision["metrics"][n].get(m)) is not None for n in names)]
    head = "| metric | " + " | ".join(f"{n} ({decision['candidates'][n].get('model')})" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    for m in present:
        vals = []
        for n in names:
            v = _num(decision["metrics"][n].get(m))
            vals.append("–" if v is None else f"{v:.4f}")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    lines.append("| **gate** | " + " | ".join("PASS" if decision["candidates"][n]["passed"] else "REJECTED"
                                              for n in names) + " |")
    return "\n".join(lines)


def champion_lines(decision: dict) -> list[str]:
    """The champion/challenger comparison (what the candidates had to beat), as Markdown lines; [] when off."""
    cc = decision.get("champion_challenger") or {}
    if not cc.get("enabled"):
        return []
    m, rule = cc["metric"], cc.get("rule") or {}
    fmt = (lambda v: "–" if v is None else f"{v:.4f}")
    lines = [f"Every candidate must beat the best baseline and the deployed champion on {m} by "
             f"{rule.get('margin', 0):g} ({rule.get('margin_kind', 'relative')}), on the same offline split, "
             "with its collapse guards (" + ", ".join(f"{g['metric']} {g['op']} {g['bound']:g}"
                                                       for g in rule.get("collapse_guards", [])) + ").", "",
             f"| compared against | {m} | split |", "|---|---:|---|"]
    for n, b in (cc.get("baselines") or {}).items():
        best = " (best)" if n == cc.get("best_baseline") else ""
        lines.append(f"| baseline {n}{best} | {fmt(b.get(m))} | {b.get('split_id') or '?'} |")
    if not cc.get("baselines"):
        lines.append("| no baseline evaluated | – | – |")
    ch = cc.get("champion")
    if ch:
        lines.append(f"| champion {ch['name']} ({ch['uri']}) | {fmt(ch.get(m))} | {ch.get('split_id') or '?'} |")
    else:
        lines += ["", f"**{cc.get('note') or 'no champion deployed: first release'}**"]
    return lines


def render_markdown(decision: dict, table: str) -> str:
    parts = [f"# Candidate comparison\n\nWinner: **{decision['winner']}** (by {decision['primary']}); "
             f"passed: {', '.join(decision['passed']) or 'none'}; rejected: {', '.join(decision['rejected']) or 'none'}.",
             "", table, ""]
    cc = champion_lines(decision)
    if cc:
        parts += ["## Champion / challenger", "", *cc, ""]
    parts.append("## Gate reasons")
    for n, d in decision["candidates"].items():
        parts.append(f"\n**{n}** ({d.get('model')}): {'PASS' if d['passed'] else 'REJECTED'}")
        parts += [f"- {r}" for r in d["reasons"]]
    return "\n".join(parts) + "\n"


def _plot_accuracy_diversity(decision: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    x_key = decision["primary"]
    y_key = next((k for k in ("diversity@50", "ild@50", "diversity@20") if any(
        _num(m.get(k)) is not None for m in decision["metrics"].values())), None)
    if y_key is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = dict(zip(decision["metrics"], ("tab:blue", "tab:orange", "tab:purple", "tab:brown")))
    for n, pts in (decision.get("tradeoff") or {}).items():  # the controllable-aggregation curve per candidate
        pts = [p for p in pts if _num(p.get(x_key)) is not None and _num(p.get(y_key)) is not None]
        if pts:
            ax.plot([p[x_key] for p in pts], [p[y_key] for p in pts], "-", marker=".", color=colors.get(n),
                    alpha=0.6, label=f"{n}: lambda {pts[0]['lambda']:g}..{pts[-1]['lambda']:g}")
    for i, (n, m) in enumerate(decision["metrics"].items()):
        x, y = _num(m.get(x_key)), _num(m.get(y_key))
        if x is None or y is None:
            continue
        ok = decision["candidates"][n]["passed"]
        ax.scatter([x], [y], s=80, marker="o" if ok else "x", color="tab:green" if ok else "tab:red")
        ax.annotate(f"{n} ({decision['candidates'][n].get('model')})", (x, y), textcoords="offset points",
                    xytext=(-20, 10) if i % 2 == 0 else (-20, -16))
    for t in decision["thresholds"]:
        if t["metric"] == x_key:
            ax.axvline(t["bound"], ls="--", color="grey", lw=1)
        if t["metric"] == y_key:
            ax.axhline(t["bound"], ls="--", color="grey", lw=1)
    ax.set_xlabel(x_key + " (accuracy)")
    ax.set_ylabel(y_key + " (diversity)")
    ax.set_title("Accuracy vs diversity (o passed, x rejected)")
    if decision.get("tradeoff") and any(decision["tradeoff"].values()):
        ax.legend(fontsize=8, loc="best")
    ax.margins(0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render_html(decision: dict, table_md: str, plot: Path | None) -> str:
    import base64
    import html as H

    rows = [r for r in table_md.splitlines() if r.startswith("|") and not r.startswith("|---")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    thead = "".join(f"<th>{H.escape(c)}</th>" for c in cells[0])
    tbody = "".join("<tr>" + "".join(f"<td>{H.escape(c.replace('**', ''))}</td>" for c in r) + "</tr>"
                    for r in cells[1:])
    img = ""
    if plot is not None and plot.is_file():
        img = ('<img alt="accuracy-diversity plot" src="data:image/png;base64,'
               + base64.b64encode(plot.read_bytes()).decode() + '"/>')
    cc_md = champion_lines(decision)
    cc_html = ""
    if cc_md:
        body = []
        for ln in cc_md:
            if ln.startswith("|---"):
                continue
            if ln.startswith("|"):
                body.append("<tr>" + "".join(f"<td>{H.escape(c.strip())}</td>" for c in ln.strip("|").split("|"))
                            + "</tr>")
            elif ln:
                body.append(f"<p>{H.escape(ln.replace('**', ''))}</p>")
        paras = [b for b in body if b.startswith("<p>")]
        rows_cc = [b for b in body if b.startswith("<tr>")]
        cc_html = ("<h2>Champion / challenger</h2>" + (paras[0] if paras else "") + "<table>" + "".join(rows_cc)
                   + "</table>" + "".join(paras[1:]))
    reasons = "".join(
        f"<h3>{H.escape(n)} ({H.escape(str(d.get('model')))}): {'PASS' if d['passed'] else 'REJECTED'}</h3><ul>"
        + "".join(f"<li>{H.escape(r)}</li>" for r in d["reasons"]) + "</ul>"
        for n, d in decision["candidates"].items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mirec candidate comparison</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Candidate comparison</h1><p>Winner: <b>{H.escape(decision['winner'])}</b> "
            f"(by {H.escape(decision['primary'])})</p><table><thead><tr>{thead}</tr></thead><tbody>{tbody}"
            f"</tbody></table>{img}{cc_html}<h2>Gate reasons</h2>{reasons}</body></html>")



def ui_metrics(info: dict) -> dict[str, float]:
    """The evaluation's scalar metrics for a kfp Metrics artifact (the table's metrics first)."""
    m = info.get("metrics") or {}
    keys = [k for k in TABLE_METRICS if k in m] + sorted(k for k in m if k not in TABLE_METRICS)
    return {k: float(m[k]) for k in keys if _num(m[k]) is not None}


# ---- run summary --------------------------------------------------------------------------------------------
def collect_run(run_dir: str | Path) -> dict:
    """Every step record of one pipeline run directory (<pipeline_root>/<pipeline>-<ts>/<task>/<artifact>/)."""
    run = Path(run_dir)
    steps: dict[str, list[dict]] = {}
    for f in sorted(run.glob(f"*/*/{STEP_FILE}")):
        rec = json.loads(f.read_text())
        rec["path"] = str(f.parent)
        steps.setdefault(rec["step"], []).append(rec)
    decision = next(iter(sorted(run.glob(f"*/*/{DECISION_FILE}"))), None)
    return {"run_dir": str(run), "steps": steps,
            "decision": json.loads(decision.read_text()) if decision else None,
            "decision_dir": str(decision.parent) if decision else None}


def _one(steps: dict, step: str, candidate: str | None = None) -> dict:
    recs = steps.get(step, [])
    if candidate is not None:
        recs = [r for r in recs if r.get("candidate") == candidate]
    return recs[0] if recs else {}


def summarize_run(run_dir: str | Path, wall_s: float | None = None) -> str:
    """The human summary printed at the end of a run: where the artifacts are, gate decisions, the winner,
    the comparison table, and every step that was skipped (with why)."""
    c = collect_run(run_dir)
    s, d = c["steps"], c["decision"]
    lines = [f"== mirec training pipeline: run {Path(run_dir).name}" + (f" ({wall_s:.0f}s)" if wall_s else ""),
             f"artifacts: {run_dir}/  (paths below are relative to it)"]
    di = _one(s, "data_ingest")
    if di:
        lines.append(f"data      : {di.get('source')} -> {di.get('n_users')} users, {di.get('n_items')} items, "
                     f"{di.get('rows_kept')} interactions kept, {di.get('quarantined')} quarantined  [{di['path']}]")
    fe = _one(s, "features_materialize")
    if fe:
        lines.append(f"feast     : {fe.get('status').upper()}" + (f" ({fe.get('reason')})" if fe.get("reason") else
                     f" profile={fe.get('profile')} store={fe.get('store_dir')}"))
    td = _one(s, "build_training_data")
    if td:
        lines.append(f"train data: examples from {td.get('examples', 'dataset')} (Feast point-in-time frame "
                     f"{td.get('feast')}, {td.get('labels')} labels, {td.get('mismatched_histories', 0)} mismatches "
                     f"of {td.get('checked', 0)} checked)  [{td['path']}]")
    for n in CANDIDATES:
        tr = _one(s, "train_candidate", n)
        if tr:
            tm = tr.get("train_metrics") or {}
            budget = (f"{tm.get('epochs')} of at most {tr.get('epochs')} epochs, best at {tm.get('best_epoch')}, "
                      f"stopped by {tm.get('stopped_by')}") if tm.get("stopped_by") else f"{tr.get('epochs')} epochs"
            lines.append(f"train {n}   : {tr.get('model')} K={tr.get('K')} {budget}, "
                         f"{tr.get('seconds')}s, {tr.get('mode')}  [{tr['path']}]")
            if tm.get("stopped_by") in ("epochs", "max_time_s", "max_steps"):
                lines.append(f"            (a reduced budget: the {tm['stopped_by']} cap ended training before early "
                             "stopping did; raise the pipeline's `epochs` / train_config for a full run)")
    if d:
        lines += ["", comparison_table(d), "", f"winner: {d['winner']} (by {d['primary']})"]
        cc = d.get("champion_challenger") or {}
        if cc.get("enabled"):
            ch = cc.get("champion")
            best = cc.get("best_baseline")
            lines.append(f"champion/challenger on {cc['metric']}: best baseline {best or 'none'}"
                         + (f" {cc['best_baseline_value']:.4f}" if best else "") + "; "
                         + (f"champion {ch['name']} {_num(ch.get(cc['metric'])) or float('nan'):.4f} ({ch['uri']})" if ch
                            else cc.get("note", "no champion")))
        for n, cd in d["candidates"].items():
            verdict = "PASSED" if cd["passed"] else "REJECTED"
            failed = [r for r in cd["reasons"] if r.startswith("FAIL")]
            lines.append(f"gate {n}: {verdict}" + (f" -- {'; '.join(failed)}" if failed else ""))
        lines.append(f"report: {c['decision_dir']}/report.html (+ report.md, accuracy_diversity.png)")
    pk = _one(s, "package_candidates")
    if pk:
        if pk.get("status") == "ok":
            for n, m in pk["mars"].items():
                lines.append(f"MAR {n}: {pk['path']}/model-store/{m['mar']} (version {m['version']}, "
                             f"{m['mar_bytes'] / 1e6:.1f} MB)")
            lines.append(f"TorchServe config: {pk.get('config')}")
        else:
            lines.append(f"package: {pk.get('status').upper()} ({pk.get('reason')})")
    ref = _one(s, "build_monitoring_reference")
    if ref:
        lines.append(f"monitoring reference: {ref.get('status').upper()}" +
                     (f" [{ref['path']}]" if ref.get("status") == "ok" else f" ({ref.get('reason')})"))
    dep = _one(s, "deploy")
    if dep:
        if dep.get("status") == "ok":
            arms = ", ".join(f"{a['name']}={a['model']}@{a['weight']:g}" for a in dep["arms"])
            lines.append(f"deploy ({dep['mode']}): {dep['path']}/values-release.yaml  arms: {arms or 'the profile split'}")
            lines.append(f"release   : {dep['release_uri']} (published, verified by `mirec release fetch`)"
                         if dep.get("release_uri") else
                         f"release   : {dep['path']}/release/ (not published: set the pipeline's release_store)")
        else:
            lines.append(f"deploy: {dep.get('status').upper()} ({dep.get('reason')})")
    prefix = f"{run_dir}/"  # paths below the run directory are shown relative to it
    lines = lines[:2] + [ln.replace(prefix, "") for ln in lines[2:]]
    missing = [st for st in ("data_ingest", "features_materialize", "build_training_data", "train_candidate",
                             "evaluate_candidate", "gate", "package_candidates", "build_monitoring_reference",
                             "deploy") if st not in s]
    if missing:
        lines.append(f"steps with no record (failed or not run): {', '.join(missing)}")
    return "\n".join(lines)


