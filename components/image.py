"""The container image every component runs in: built from the repository's Dockerfile.

Override at compile time with MIREC_COMPONENT_IMAGE (e.g. your registry's tag or a digest); the committed
YAML under pipelines/compiled/ uses the default below, and the sync test compiles with the default.
"""

import os

DEFAULT_IMAGE = "ghcr.io/mirec-project/mirec:0.1.0"
BASE_IMAGE = os.environ.get("MIREC_COMPONENT_IMAGE") or DEFAULT_IMAGE
