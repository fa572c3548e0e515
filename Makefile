# Archipel's entry points for people and scripts. `make demo` and `make test` are the
# two commands a fresh machine needs; everything they depend on is installed here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE ?= $(HOME)/.cache/archipel
UV_VERSION := 0.13.8
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
PY := .venv/bin/python
N ?= 3
PROFILE ?= api
# make up ETCD_MEMBERS=3: the control plane on an etcd cluster of its own (3 members).
ETCD_MEMBERS ?= 0
# make up REPLICAS=3: three control-plane processes on that etcd, one admin token;
# make chaos REPLICAS=3: the same under faults (chaos runs 2 by default).
REPLICAS ?= 1
PYTEST_ARGS ?=

.PHONY: image bench bench-quick bench-e2e bench-failover bench-replicas chaos up down proto help setup tools test test-fast lint typecheck fmt members-up members-down members-ls demo clean

help:
	@echo "make demo          start everything locally and propagate the sample app (make down stops it)"
	@echo "make up | down     start or stop etcd, 2 member clusters, the control plane and agents"
	@echo "make up ETCD_MEMBERS=3            the same, the control plane on a 3-member etcd cluster"
	@echo "make up REPLICAS=3                the same, 3 control-plane replicas on one etcd"
	@echo "make test          install everything, then lint, type-check and run the whole test suite"
	@echo "make image         build the container image (control plane, agent, CLI) with mmdebstrap and buildah"
	@echo "make tools         build kube-apiserver, etcd, kwok, grpcurl, helm and buf into $(CACHE)/bin"
	@echo "make members-up N=3 PROFILE=api|full   start member clusters in the background"
	@echo "make members-ls | members-down"
	@echo "make chaos DURATION=300 SEED=1   random faults under load on real members; report in .local/bench/chaos.json"
	@echo "make chaos REPLICAS=3             the same with 3 control-plane replicas (faults hit one at random)"

$(UV):
	@python3 -m pip --version >/dev/null 2>&1 || python3 -m ensurepip --upgrade
	python3 -m pip install --quiet --disable-pip-version-check --target $(CACHE)/uv-$(UV_VERSION) uv==$(UV_VERSION)

# The virtual environment follows the lock file exactly.
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python python3
	@touch $@

setup: .venv/.synced

tools:
	bash build/tools.sh

# One image for the control plane, the agent and the CLI; no registry needed.
image: setup
	bash build/image/build.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-cache
	@bash build/tools.sh helm buf
	$$(bash build/tools.sh --paths | sed -n 's/^helm=//p') lint --strict charts/archipel --set controlPlane.enabled=true
	cd proto && $$(bash ../build/tools.sh --paths | sed -n 's/^buf=//p') lint
	cd proto && $$(bash ../build/tools.sh --paths | sed -n 's/^buf=//p') breaking --against released.binpb

typecheck: setup
	.venv/bin/mypy

fmt: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: setup tools lint typecheck
	.venv/bin/pytest $(PYTEST_ARGS)

# Unit tests only: no servers, seconds.
test-fast: setup
	.venv/bin/pytest -m "not members and not servers and not tools" $(PYTEST_ARGS)

members-up: setup
	@bash build/tools.sh etcd kube $(if $(filter full,$(PROFILE)),kwok)
	$(PY) -m archipel.fleet.fleetctl up --count $(N) --profile $(PROFILE) --root .local/members

members-down: setup
	$(PY) -m archipel.fleet.fleetctl down --root .local/members

members-ls: setup
	@$(PY) -m archipel.fleet.fleetctl ls --root .local/members

# The main job: etcd, two full member clusters, the control plane and an agent per member.
up: setup
	@bash build/tools.sh etcd kube kwok
	$(PY) -m archipel.fleet.fleetctl up --count 2 --profile full --root .local/members --control-plane --etcd-members $(ETCD_MEMBERS) --replicas $(REPLICAS) --reuse

down: setup
	$(PY) -m archipel.fleet.fleetctl down --root .local/members

demo: up
	$(PY) -m archipel.fleet.demo

# Throughput, latency, scale and memory; results in .local/bench/ (JSON, table, PNG).
bench: setup tools
	$(PY) -m bench.run

bench-quick: setup tools
	$(PY) -m bench.run --quick

# Apply-to-applied latency (median of 20) and 500 Deployments to 2 real members.
bench-e2e: setup tools
	$(PY) -m bench.e2e_propagation

# Fan-out works/s with 1, 2 and 3 control-plane replicas on one etcd, and etcd's raw
# write rate beside (simulated clusters, a few minutes).
bench-replicas: setup tools
	$(PY) -m bench.replicas

# Failover on 3 real full members, default and short timings (the defaults take ~12 min).
bench-failover: setup tools
	$(PY) -m bench.failover

# Random faults under a seeded load on real members; the report goes to .local/bench/chaos.json.
DURATION ?= 300
SEED ?= 1
# The issue's chaos fleet: two replicas unless the command line says otherwise.
chaos: REPLICAS = 2
chaos: setup tools
	$(PY) -m bench.chaos --duration $(DURATION) --seed $(SEED) --replicas $(REPLICAS)

clean: members-down
	rm -rf .local .venv

# Code generated from proto/, in every language (committed, so installs need no
# generator; tests check that regenerating changes nothing).
proto: setup
	bash build/generate-python.sh
	@for generate in clients/*/generate.sh; do \
		[ ! -f "$$generate" ] || bash "$$generate" || exit 1; \
	done
