# syntax=docker/dockerfile:1
# The gateway image: FastAPI + tritonclient, without torch or mlflow (`pip install .[gateway]`).
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile -t modelops-gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelspec/ modelspec/
COPY tritonio/ tritonio/
COPY gateway/ gateway/
COPY modelops/ modelops/
RUN pip install ".[gateway]" \
 && python -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'mlflow') if u.find_spec(m)]; sys.exit(f'gateway image must not contain {bad}' if bad else 0)" \
 && python -c "import gateway.main, modelops.cli"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 modelops \
 && useradd --system --uid 10001 --gid modelops --create-home --home-dir /home/modelops --shell /usr/sbin/nologin modelops \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MODELOPS_GATEWAY_MODEL_REPOSITORY=/models
USER 10001:10001
WORKDIR /home/modelops
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz/live', timeout=2)"]
# One worker per container: Prometheus metrics live in the process; scale with replicas instead.
ENTRYPOINT ["modelops"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080", "--workers", "1"]
