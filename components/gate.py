"""Compare the candidates and gate them: decision + reasons, comparison report (HTML + Markdown)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def gate_op(evaluation_a: Input[Dataset], evaluation_b: Input[Dataset], thresholds: dict,
            decision: Output[Artifact], report_html: Output[HTML], report_md: Output[Markdown]) -> str:
    """Returns the winner ("A", "B" or "none"); decision.json holds every rule's verdict and reason."""
    from mirec import steps

    d = steps.gate({"A": evaluation_a.path, "B": evaluation_b.path}, thresholds, decision.path,
                   report_md=report_md.path, report_html=report_html.path)
    decision.metadata.update(steps.artifact_metadata({"winner": d["winner"], "passed": d["passed"],
                                                      "rejected": d["rejected"]}))
    return d["winner"]
