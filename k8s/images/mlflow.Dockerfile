# Image for the MLflow tracking server (k8s/base/mlflow.yaml, placeholder `cdb-mlflow`).
# The official ghcr.io/mlflow/mlflow image has no PostgreSQL driver, hence this one;
# the `auth` extra (Flask-WTF) is what `mlflow server --app-name basic-auth` needs.
#   docker build -f k8s/images/mlflow.Dockerfile -t $REGISTRY/cdb-mlflow:$TAG k8s/images
FROM python:3.12-slim
ARG MLFLOW_VERSION=3.18.0
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" psycopg2-binary boto3 \
 && useradd --uid 1000 --user-group --home-dir /tmp --no-create-home mlflow
USER 1000:1000
WORKDIR /tmp
EXPOSE 5000
ENTRYPOINT []
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
