# syntax=docker/dockerfile:1
# The model server (`marfleet serve`), in two flavours that differ only in PyTorch's wheels:
#   cpu  (default): CPU wheels, no CUDA libraries.
#   cuda: CUDA wheels, which carry their own CUDA and cuDNN libraries, so no CUDA base image is
#         needed; the NVIDIA container toolkit on the node mounts the driver.
# Build from the repository root:
#   docker build -f charts/marfleet/images/runtime.Dockerfile -t marfleet-runtime:0.1.0 .
#   docker build -f charts/marfleet/images/runtime.Dockerfile --build-arg FLAVOR=cuda \
#     -t marfleet-runtime:0.1.0-cuda .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG FLAVOR=cpu

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 OMP_NUM_THREADS=1 HOME=/tmp

FROM base AS torch-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision

FROM base AS torch-cuda
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN pip install --index-url https://download.pytorch.org/whl/cu128 torch torchvision

FROM torch-${FLAVOR}
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
# The `runtime` extra (pyproject.toml): torch is already there, so pip adds only the rest.
RUN pip install ".[runtime]" && rm -rf /src
WORKDIR /
# The operator's pod security context runs model servers as 1000 (operator/render.py RUNTIME_UID).
USER 1000:1000
EXPOSE 8080 8081 8082
ENTRYPOINT ["marfleet"]
CMD ["serve", "--foreground", "--model-store", "/mnt/models"]
