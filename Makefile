# marfleet — every target installs what it needs and skips what is already there.
#   make demo      the quickstart (see README)
#   make test      setup, lint, type check, all tests (FAST=1 skips the slow end-to-end ones)
#   make cluster-up / cluster-down   the local Kubernetes control plane (CLUSTER=name,
#                                    NODE=real adds a real containerd+kubelet node; root;
#                                    NODES=50: 50 simulated CPU nodes, the scale profile)
#   make bench-peers   marfleet against TorchServe, KServe, Ray Serve, LitServe (docs/benchmarks.md)
#   make bench-operator   the operator at 100/300/1,000 InferenceServices (docs/scale.md)
#   make real      the real-node scenario: marfleet's images as real pods, real HPA (root)
#   make soak      5 minutes of valid traffic plus abuse against one server (SOAK_SECONDS=300)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := etcd-server openssl openjdk-17-jre-headless git curl ca-certificates prometheus
DEPS_HASH := $(shell cat pyproject.toml setup.py | sha1sum | cut -c1-12)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)
APT_STAMP := $(VENV)/.apt-$(shell echo $(APT_PACKAGES) | sha1sum | cut -c1-12)
# the real node (`make cluster-up NODE=real`, and the slow tests that start one)
NODE_APT_PACKAGES := containerd runc containernetworking-plugins iptables debootstrap umoci
NODE_APT_STAMP := $(VENV)/.apt-node-$(shell echo $(NODE_APT_PACKAGES) | sha1sum | cut -c1-12)
CLUSTER ?= dev
# The top-level operator/ folder would shadow Python's stdlib `operator` module if the current
# directory were put first on sys.path; the venv's marfleet-repo.pth appends the repo instead.
export PYTHONSAFEPATH := 1
PYTEST_ARGS ?=
ifdef FAST
PYTEST_ARGS += -m "not slow"
TEST_SETUP :=
else
TEST_SETUP := node-setup kserve-venv
endif
ifeq ($(NODE),real)
NODE_FLAG := --real-node
CLUSTER_SETUP := node-setup
endif

.PHONY: protos soak setup apt venv toolchain node-setup kserve-venv test lint format typecheck unit cluster-up cluster-down demo demo-down real bench bench-peers bench-gpu bench-operator clean

setup: apt venv toolchain

apt: $(APT_STAMP)
$(APT_STAMP):
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v go >/dev/null || missing="$$missing golang-go"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: $(DEPS_STAMP)
$(DEPS_STAMP): pyproject.toml setup.py
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/marfleet-repo.pth"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@mkdir -p $(VENV)/typecheck/marfleet
	@ln -sfn ../../../operator $(VENV)/typecheck/marfleet/operator
	@ln -sfn ../../../runtime $(VENV)/typecheck/marfleet/runtime
	@rm -f $(VENV)/.deps-* && touch $@

toolchain: venv
	GOTOOLCHAIN=auto $(PY) -m e2e.localcluster build

node-setup: setup $(NODE_APT_STAMP)
	GOTOOLCHAIN=auto $(PY) -m e2e.localcluster build --real-node
$(NODE_APT_STAMP):
	@missing=""; for p in $(NODE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the real node:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

# KServe's own server, for the slow tests that compare marfleet's KServe protocols with it
# (a venv of its own outside the clone, named by its pin; e2e/bench/peer_venv.py)
kserve-venv: venv
	@$(PY) -m e2e.bench.peer_venv --kserve-only > /dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# mypy's cache lives beside the toolchains, not in the tree: a fresh clone (CI) then checks
# only what changed (~5 s) instead of everything (~80 s on 2 cores). mypy re-checks any module
# whose source hash differs from the cached one, and writes its cache files atomically.
MYPY_CACHE := $(HOME)/.cache/marfleet/mypy

typecheck: venv
	MYPYPATH=$(VENV)/typecheck $(VENV)/bin/mypy --cache-dir $(MYPY_CACHE) -p marfleet -p e2e -p tests

test: setup $(TEST_SETUP) lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

cluster-up: setup $(CLUSTER_SETUP)
	@$(PY) -m e2e.localcluster up --name $(CLUSTER) $(NODE_FLAG) $(if $(NODES),--nodes $(NODES))

cluster-down: venv
	@$(PY) -m e2e.localcluster down --name $(CLUSTER)

demo: setup
	@$(PY) -m e2e.demo up

demo-down: venv
	@$(PY) -m e2e.demo down

real: setup node-setup
	@$(PY) -m e2e.scenario $(if $(KEEP),--keep)

soak: setup
	$(PY) -m e2e.bench.soak --duration $(or $(SOAK_SECONDS),300) --out bench-results/soak.json

bench: setup
	$(PY) -m e2e.bench.run --duration $(or $(BENCH_SECONDS),10) --rounds 3 --out bench-results/serve-vs-torchserve.json

# marfleet, TorchServe, KServe, Ray Serve and LitServe in one interleaved run (docs/benchmarks.md);
# the peers come from PyPI into .venv-peers, which sees this venv's torch after its own packages
bench-peers: setup
	$(PY) -m e2e.bench.run --servers marfleet torchserve kserve ray litserve --peer-venv .venv-peers \
	  --scenarios mlp-c16 mlp-c64 resnet18-b1 resnet18-b8 \
	  --duration $(or $(BENCH_SECONDS),10) --rounds $(or $(ROUNDS),3) \
	  --out bench-results/peers.json --chart bench-results/peers.png

bench-gpu: setup
	$(PY) -m e2e.bench.gpu --out bench-results/resnet50-gpu

# not part of `make test`: minutes of a 50-node simulated cluster (docs/scale.md).
# COUNTS="100 300 1000" NODES=50 BEFORE=/other/tree/.venv/bin/marfleet (measured side by side)
bench-operator: setup
	$(PY) -m e2e.bench.operator_scale --nodes $(or $(NODES),50) --counts $(or $(COUNTS),100 300 1000) \
	  $(if $(BEFORE),--operator before=$(BEFORE)) --operator current=$(VENV)/bin/marfleet \
	  --namespaces $(or $(NAMESPACES),1) --out bench-results/operator-bench.json

clean:
	rm -rf $(VENV) .venv-peers .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# runtime/server/protos/*_pb2.py(i): TorchServe 0.12's gRPC interfaces (inference.proto,
# management.proto, open_inference_grpc.proto, as shipped in its model-server.jar)
protos:
	cd runtime/server/protos && rm -f *_pb2.py *_pb2.pyi && $(CURDIR)/$(PY) -m grpc_tools.protoc -I . \
	  -I "$$($(CURDIR)/$(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
	  --python_out=. --pyi_out=. inference.proto management.proto open_inference_grpc.proto
