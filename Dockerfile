# The mirec project image: every Kubeflow pipeline component (components/), the PyTorchJob replicas
# (k8s/pytorchjob.yaml), the recommendation API, `feast serve` and `mirec monitor` run in it.
#
#   docker build -t ghcr.io/mirec-project/mirec:0.1.0 .                                  # CPU (default)
#   docker build --build-arg TORCH_VARIANT=cu126 -t ghcr.io/mirec-project/mirec:0.1.0-gpu .   # CUDA 12.6 torch
#
# TORCH_VARIANT picks the wheel index of torch==2.13.0 (cpu | cu126 | ...); with a CUDA variant faiss-cpu is
# swapped for faiss-gpu-cu12. TorchServe itself runs in the pytorch/torchserve image (charts/mirec), so no
# Java here. Components are compiled against this image tag: see components/image.py (MIREC_COMPONENT_IMAGE).
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MIREC_FEAST_REPO=/app/feature_repo \
    MPLBACKEND=Agg

WORKDIR /app

# libgomp: torch/faiss OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# 1) torch from its own index (CPU wheel by default, ~200 MB instead of ~3 GB of CUDA libraries),
# 2) the rest of the locked dependencies (torch already satisfied), 3) the project itself.
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
    && grep -v '^torch==' requirements.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && if [ "${TORCH_VARIANT}" != "cpu" ]; then pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12; fi

COPY mirec ./mirec
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
COPY k8s ./k8s
RUN pip install --no-deps -e . && python -c "import mirec.steps, components, pipelines" \
    && useradd --uid 10001 --create-home mirec && chown -R mirec /app

USER 10001
ENTRYPOINT []
CMD ["mirec", "--help"]
