"""Compare the candidates and gate them: decision + reasons, comparison report (HTML + Markdown)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_op(evaluation_a: Input[Dataset], evaluation_b: Input[Dataset], baselines: Input[Dataset], thresholds: dict,
            release_store: str, release_name: str, champion_release: str,
            decision: Output[Artifact], report_html: Output[HTML], report_md: Output[Markdown]) -> str:
    """Returns the winner ("A", "B" or "none"); decision.json holds every rule's verdict and reason, incl. the
    champion/challenger comparison against the baselines and the release store's deployed champion."""
    from mirec import steps

    d = steps.gate({"A": evaluation_a.path, "B": evaluation_b.path}, thresholds, decision.path,
                   report_md=report_md.path, report_html=report_html.path, baselines_dir=baselines.path,
                   release_store=release_store, release_name=release_name, champion_release=champion_release)
    decision.metadata.update(steps.artifact_metadata({"winner": d["winner"], "passed": d["passed"],
                                                      "rejected": d["rejected"]}))
    return d["winner"]
