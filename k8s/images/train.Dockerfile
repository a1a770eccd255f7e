# The training image: every Ray pod of the RayJobs in k8s/ (head and workers) runs it; the manifests
# name it by the placeholder `cdb`, which kustomize `images:` points at your build (k8s/README.md, step 4).
# Build it from the repository root; only pyproject.toml, setup.py, README.md, cdb/ and ds_configs/ go in:
#   docker build -f k8s/images/train.Dockerfile -t $REGISTRY/cdb:$TAG .
#   docker push $REGISTRY/cdb:$TAG
#
# CUDA: torch 2.13.0's Linux x86_64 wheel on PyPI is the CUDA 13.0 build (it requires cuda-toolkit
# 13.0.3 and NCCL from nvidia-nccl-cu13 2.29.7, both installed as pip packages with it). The base is
# the CUDA 13.0 devel image: the same CUDA for nvcc, which DeepSpeed uses to build its ops (fused
# Adam and the like) on first use, and a node driver new enough for CUDA 13.0 is required.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

# Python 3.12 (Ubuntu 24.04's) with its headers, a C++ toolchain and ninja for DeepSpeed's op builds;
# wget for KubeRay's default health probes.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv python3.12-dev build-essential ninja-build libaio-dev wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The project, installed (not editable) into its own venv: its pinned dependencies bring torch 2.13.0
# (CUDA 13.0), NCCL, DeepSpeed and ray[train,default] 2.60.0, the rayVersion of the manifests.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY pyproject.toml setup.py README.md /tmp/cdb-src/
COPY cdb /tmp/cdb-src/cdb
COPY ds_configs /tmp/cdb-src/ds_configs
RUN python3.12 -m venv /opt/venv \
 && pip install --no-cache-dir /tmp/cdb-src \
 && rm -rf /tmp/cdb-src \
 && python -c "import torch, ray, deepspeed, cdb.engine; \
assert torch.version.cuda.startswith('13.0'), torch.version.cuda; \
assert torch.distributed.is_nccl_available(); \
assert ray.__version__ == '2.60.0', ray.__version__"

# Non-root, uid 1000 (what the pods' securityContext asks for). Ubuntu 24.04 images ship a user
# `ubuntu` with that uid; it gives way to `ray`, the name Ray's own images use.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --uid 1000 --user-group --create-home --shell /bin/bash ray
USER 1000:1000
WORKDIR /home/ray
