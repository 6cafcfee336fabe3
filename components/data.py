"""Data components: validate/ingest -> Feast apply + materialize -> point-in-time training data."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def data_ingest_op(data_uri: str, data_format: str, data_config: dict, split: str, dataset: Output[Dataset]):
    """Validate, quarantine and split raw interactions (data_uri "" = embedded synthetic data)."""
    from mirec import steps

    info = steps.data_ingest(dataset.path, data_uri=data_uri, data_format=data_format, data_config=data_config,
                             split=split)
    dataset.metadata.update(steps.artifact_metadata(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def features_materialize_op(dataset: Input[Dataset], features_config: dict, use_feast: bool,
                            feature_store: Output[Artifact]):
    """Feast apply (sources + registry) and materialize into the online store."""
    from mirec import steps

    info = steps.features_materialize(dataset.path, feature_store.path, features_config=features_config,
                                      enabled=use_feast)
    feature_store.metadata.update(steps.artifact_metadata(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_training_data_op(dataset: Input[Dataset], feature_store: Input[Artifact], max_labels: int,
                           training_data: Output[Dataset]):
    """Training dataset + point-in-time-correct Feast training frame, checked against the sequences."""
    from mirec import steps

    info = steps.build_training_data(dataset.path, feature_store.path, training_data.path, max_labels=max_labels)
    training_data.metadata.update(steps.artifact_metadata(info))
