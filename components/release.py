"""Release components: package the gated candidates as MARs -> monitoring reference -> deploy (publish the
release to the release store, mirec.release)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def package_candidates_op(model_a: Input[Model], model_b: Input[Model], evaluation_a: Input[Dataset],
                          evaluation_b: Input[Dataset], decision: Input[Artifact], version: str,
                          package_config: dict, package: Output[Model], mar_a: Output[Model],
                          mar_b: Output[Model]):
    """MARs for the candidates that passed the gate (model-store/ + config.properties); a rejected
    candidate's Model artifact holds only REJECTED.json with the reasons."""
    from mirec import steps

    info = steps.package_candidates({"A": model_a.path, "B": model_b.path},
                                    {"A": evaluation_a.path, "B": evaluation_b.path}, decision.path,
                                    package.path, mar_dirs={"A": mar_a.path, "B": mar_b.path}, version=version,
                                    package_config=package_config)
    package.metadata.update(steps.artifact_metadata(info))
    for name, art in (("A", mar_a), ("B", mar_b)):
        art.metadata.update(steps.artifact_metadata(steps.read_step(art.path)))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_monitoring_reference_op(evaluation_a: Input[Dataset], evaluation_b: Input[Dataset],
                                  training_data: Input[Dataset], package: Input[Model],
                                  reference: Output[Dataset]):
    """The monitoring reference (offline served records of the test users) of each packaged candidate."""
    from mirec import steps

    info = steps.build_monitoring_reference({"A": evaluation_a.path, "B": evaluation_b.path}, training_data.path,
                                            package.path, reference.path)
    reference.metadata.update(steps.artifact_metadata(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_op(package: Input[Model], reference: Input[Dataset], experiment_split: float, deploy_mode: str,
              torchserve_management_url: str, mar_base_url: str, release_store: str, release_name: str,
              release: Output[Artifact]):
    """Publish the release (MARs + sha256, package.json, monitoring reference, values) to release_store and
    write values-release.yaml (+ TorchServe management API registration in mode 'torchserve')."""
    from mirec import steps

    info = steps.deploy(package.path, release.path, experiment_split=experiment_split, mode=deploy_mode,
                        torchserve_management_url=torchserve_management_url, mar_base_url=mar_base_url,
                        reference_dir=reference.path, release_store=release_store, release_name=release_name)
    release.metadata.update(steps.artifact_metadata(info))
