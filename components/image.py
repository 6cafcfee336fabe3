"""The container image every component runs in: built from the repository's Dockerfile (its default target;
the `torchserve` target is the chart's TorchServe image, not used by components).

Override at compile time with MIREC_COMPONENT_IMAGE (e.g. your registry's tag or a digest); the committed
YAML under pipelines/compiled/ uses the default below, and the sync test compiles with the default.
"""

import os

DEFAULT_IMAGE = "ghcr.io/mirec-project/mirec:0.1.0"
BASE_IMAGE = os.environ.get("MIREC_COMPONENT_IMAGE") or DEFAULT_IMAGE
