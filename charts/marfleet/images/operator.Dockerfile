# syntax=docker/dockerfile:1
# The operator (`marfleet operator`) and the traffic router (`marfleet router`): the package
# with its `operator` extra (pyproject.toml is the only list of dependencies), no PyTorch.
# Build from the repository root:
#   docker build -f charts/marfleet/images/operator.Dockerfile -t marfleet-operator .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN pip wheel --wheel-dir /wheels ".[operator]"

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl
# The chart's pod security context runs it as 65532 with a read-only root filesystem.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["marfleet"]
CMD ["operator"]
