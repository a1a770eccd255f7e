# Image for the MLflow tracking server (k8s/base/mlflow.yaml, image `cdb-mlflow`).
# The official ghcr.io/mlflow/mlflow image has no PostgreSQL driver, hence this one;
# the `auth` extra (Flask-WTF) is what `mlflow server --app-name basic-auth` needs.
# Every input is pinned: the base by digest (k8s/images/refresh.py re-resolves it), the packages by version.
#   docker build -f k8s/images/mlflow.Dockerfile -t $REGISTRY/cdb-mlflow:$TAG k8s/images
ARG PYTHON_IMAGE=python:3.12-slim@sha256:401f6e1a67dad31a1bd78e9ad22d0ee0a3b52154e6bd30e90be696bb6a3d7461
FROM ${PYTHON_IMAGE}
ARG MLFLOW_VERSION=3.18.0
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" psycopg2-binary==2.9.13 boto3==1.44.18 \
 && useradd --uid 1000 --user-group --home-dir /tmp --no-create-home mlflow
USER 1000:1000
WORKDIR /tmp
EXPOSE 5000
ENTRYPOINT []
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
