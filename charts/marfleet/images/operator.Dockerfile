# syntax=docker/dockerfile:1
# The operator (`marfleet operator`) and the traffic router (`marfleet router`): neither imports
# torch, so the package is installed without its dependencies and only theirs are added.
# Build from the repository root:
#   docker build -f charts/marfleet/images/operator.Dockerfile -t marfleet-operator .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels \
      "kopf>=1.37" "kubernetes>=30" "pyyaml>=6" "prometheus-client>=0.20" "httpx>=0.27" \
      "jinja2>=3.1" "aiohttp>=3.9" "httptools>=0.6" "uvloop>=0.19"

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl
# The chart's pod security context runs it as 65532 with a read-only root filesystem.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["marfleet"]
CMD ["operator"]
