# syntax=docker/dockerfile:1
# The MLflow tracking server of the production deployments: PostgreSQL backend store (psycopg2)
# and an S3-compatible artifact store (boto3), artifacts proxied through the server
# (--serve-artifacts), so clients need no object-store credentials.
# Build from the repository root:  docker build -f deploy/docker/mlflow.Dockerfile -t modelops-mlflow:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# mlflow pinned like the `registry` extra of pyproject.toml.
RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.8"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid mlflow --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
# Backend store and artifact destination come from MLFLOW_BACKEND_STORE_URI and
# MLFLOW_ARTIFACTS_DESTINATION; allowed Host headers from MLFLOW_SERVER_ALLOWED_HOSTS.
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000", "--workers", "2", "--serve-artifacts"]
