# The two mirec images, built from the same base stage (Python 3.11, the locked dependencies, the project):
#
#   ghcr.io/mirec-project/mirec            (default, last stage) every Kubeflow pipeline component (components/),
#       the PyTorchJob replicas (k8s/pytorchjob.yaml), the recommendation API, `feast serve` and `mirec monitor`;
#   ghcr.io/mirec-project/mirec-torchserve (target `torchserve`) TorchServe 0.12 for the chart (charts/mirec,
#       torchserve.image; KServe predictor too): the same base plus a Java 17 runtime. The stock
#       pytorch/torchserve images cannot load mirec's MARs: their Python is not 3.11 and they lack what the handler
#       (serving/handler.py + the packaged `mirec` code) imports; the MARs carry no requirements file.
#
#   docker build -t ghcr.io/mirec-project/mirec:0.1.0 .                                                         # CPU
#   docker build --build-arg TORCH_VARIANT=cu126 -t ghcr.io/mirec-project/mirec:0.1.0-gpu .                     # GPU
#   docker build --target torchserve -t ghcr.io/mirec-project/mirec-torchserve:0.1.0 .                          # CPU
#   docker build --target torchserve --build-arg TORCH_VARIANT=cu126 -t ghcr.io/mirec-project/mirec-torchserve:0.1.0-gpu .   # GPU
#
# Tags: the project version (pyproject.toml = the chart's appVersion); the chart pulls
# mirec-torchserve:<appVersion> and, with torchserve.gpu.enabled, mirec-torchserve:<appVersion>-gpu.
# TORCH_VARIANT picks the wheel index of torch==2.13.0 (cpu | cu126 | ...); with a CUDA variant faiss-cpu is
# swapped for faiss-gpu-cu12. Components are compiled against the project image tag: see components/image.py
# (MIREC_COMPONENT_IMAGE). With BuildKit (the default builder since Docker 23) a build only runs the stages
# its target needs: the project image does not install Java.
#
# Base: bookworm, pinned: python:3.11-slim now follows Debian 13 (trixie), which has no openjdk-17 package.
FROM python:3.11-slim-bookworm AS base

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
# 2) the rest of the locked dependencies (torch already satisfied; torchserve 0.12.0 among them) without the
#    development and test tools (DEV_ONLY: pytest, mypy, the S3 test server moto, kubernetes-validate and what only
#    they need; tests/test_chart.py checks the list against the lock), 3) the project.
ARG DEV_ONLY="pytest pytest-timeout iniconfig pluggy mypy librt pathspec moto responses cfn-lint kubernetes-validate"
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
    && pattern="^(torch$(printf '|%s' ${DEV_ONLY}))==" \
    && grep -viE "$pattern" requirements.lock > /tmp/requirements.txt \
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

# ------------------------------------------------------------------------------------------------------------
# TorchServe: base + a headless Java 17 runtime for TorchServe's frontend (`torchserve` itself comes from
# requirements.lock). Paths are the ones the chart mounts (charts/mirec/templates/deployment-serving.yaml):
#   /etc/torchserve/{config.properties,log4j2.xml}  ConfigMap        /home/model-server/model-store  .mar files
#   /var/run/torchserve  working dir: key_file.json (token auth)     /home/model-server/logs  LOG_LOCATION
#   /tmp  TEMP (java.io.tmpdir: unpacked MARs) and TorchServe's pid file
# With a read-only root filesystem (the chart) each of them must be a volume. Runs as UID 10001, like the API,
# which reads key_file.json (mode 0600).
FROM base AS torchserve

USER root
# /usr/share/man/man1: the JRE's postinst registers man pages with update-alternatives, slim images drop the
# folder. JAVA_HOME: an architecture-independent link to the JRE (torchserve runs $JAVA_HOME/bin/java).
COPY serving/torchserve-entrypoint.sh /usr/local/bin/mirec-torchserve-entrypoint
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")" /usr/lib/jvm/java-17 \
    && /usr/lib/jvm/java-17/bin/java -version 2>&1 | grep -q 'version "17\.' \
    && chmod 0755 /usr/local/bin/mirec-torchserve-entrypoint \
    && mkdir -p /etc/torchserve /home/model-server/model-store /home/model-server/logs /var/run/torchserve \
    && chown -R 10001:10001 /home/model-server /var/run/torchserve

# MIREC_FEAST_REPO cleared: the handler turns on its own (opt-in) Feast lookup when it is set, and the base
# stage points it at the development repo in /app/feature_repo.
# NVIDIA_DRIVER_CAPABILITIES: the GPU build needs nvidia-smi in the container (TorchServe counts GPUs with it).
# GLIBC_TUNABLES: malloc asks for transparent huge pages, so the FAISS index is mapped with 2 MB pages
# (HNSW at 10^6 items ~15% faster; mirec/serving/tsconfig.py HUGEPAGE_TUNABLE).
ENV JAVA_HOME=/usr/lib/jvm/java-17 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
    TEMP=/tmp \
    LOG_LOCATION=/home/model-server/logs \
    METRICS_LOCATION=/home/model-server/logs \
    MIREC_FEAST_REPO="" \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001
WORKDIR /var/run/torchserve
# The handler loads here (what a TorchServe worker imports: serving/handler.py and its lazy imports).
RUN torchserve --version \
    && python -c "import sys; sys.path.insert(0, '/app/serving'); import handler, mirec.serving.service, mirec.features.online"

EXPOSE 8080 8082
# The entrypoint runs `torchserve ...` in the foreground (also KServe's `torchserve --start ...`) and turns
# SIGTERM into `torchserve --stop`; see serving/torchserve-entrypoint.sh.
ENTRYPOINT ["mirec-torchserve-entrypoint"]
CMD ["torchserve", "--foreground", "--ts-config", "/etc/torchserve/config.properties", "--log-config", "/etc/torchserve/log4j2.xml", "--model-store", "/home/model-server/model-store", "--ncs"]

# ------------------------------------------------------------------------------------------------------------
# The project image (default target: keep it last).
FROM base AS mirec

USER 10001
WORKDIR /app
ENTRYPOINT []
CMD ["mirec", "--help"]
