# syntax=docker/dockerfile:1
# The sync controller image (`pip install .[registry]`): reads MLflow, writes the Triton model
# repository, loads every Triton replica. Torch comes from the CPU wheel index: the controller
# never trains, and the CUDA build would add gigabytes.
# Build from the repository root:  docker build -f deploy/docker/sync.Dockerfile -t modelops-sync:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelspec/ modelspec/
COPY tritonio/ tritonio/
COPY deployer/ deployer/
COPY modelops/ modelops/
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" \
 && pip install ".[registry]" \
 && python -c "import deployer.sync, modelops.cli"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid modelops --create-home --home-dir /home/modelops --shell /usr/sbin/nologin modelops \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
# /models is owned by the controller's user, so a fresh named volume mounted there is writable.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MODELOPS_REGISTRY_MODEL_REPOSITORY=/models MLFLOW_LOGGING_LEVEL=WARNING
USER 10001:10001
WORKDIR /home/modelops
VOLUME ["/models"]
EXPOSE 9102
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9102/metrics', timeout=2)"]
ENTRYPOINT ["modelops"]
CMD ["sync", "--watch", "--metrics-port", "9102"]
