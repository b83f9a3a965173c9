# Rollout sidecar. `make help` lists the targets. Every target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
MLVENV := .venv-mlserver
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check -q

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -U pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev]'
	touch $@

$(MLVENV)/.stamp: requirements-mlserver.txt
	$(PYTHON) -m venv $(MLVENV)
	$(MLVENV)/bin/pip install $(PIP_FLAGS) -U pip
	$(MLVENV)/bin/pip install $(PIP_FLAGS) -r requirements-mlserver.txt
	touch $@

venv: $(VENV)/.stamp ## Create the sidecar's virtual environment (.venv)
venv-mlserver: $(MLVENV)/.stamp ## Create MLServer's own virtual environment (.venv-mlserver)

generate: venv ## Regenerate sidecar/_proto from protos/
	$(PY) scripts/gen_protos.py

check-generated: venv ## Fail when sidecar/_proto differs from what protos/ generates
	$(PY) scripts/gen_protos.py --check

lint: venv ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv venv-mlserver check-generated lint check-deploy ## Lint, type check, validate deploy/, run every test
	$(VENV)/bin/pytest tests/unit -q -n 2 -p no:cacheprovider
	$(VENV)/bin/pytest tests/integration -q -p no:cacheprovider

test-unit: venv ## Unit and component tests only (no MLServer)
	$(VENV)/bin/pytest tests/unit -q

bench: venv ## Benchmarks: data plane, kill-switch propagation, canary judge, A/B validity, start-up, soak, fleet
	$(PY) bench/dataplane.py
	$(PY) bench/control_flip.py
	$(PY) bench/canary_judge.py
	$(PY) bench/ab_validity.py
	$(PY) bench/startup.py
	$(PY) bench/overrides.py
	$(PY) bench/soak.py
	$(PY) bench/fleet.py
	$(PY) bench/fleet_failover.py
	$(PY) bench/canary_death.py
	$(PY) bench/instructions.py

check-deploy: venv ## Validate deploy/: kustomize + Kubernetes schemas, Compose schema, promtool rules and tests, dashboard
	$(PY) scripts/check_deploy.py

IMAGE ?= rollout-sidecar:dev
image: ## Build the sidecar image (needs a Docker engine; none on the development machines)
	@docker info >/dev/null 2>&1 || { echo "image: no Docker engine reachable (docker info failed)"; exit 1; }
	docker build -t $(IMAGE) .

image-size: image ## Build the image and print its size
	@docker image inspect $(IMAGE) --format '{{.Size}}' | awk '{printf "$(IMAGE): %.1f MB\n", $$1 / 1e6}'

demo: venv venv-mlserver ## Real rollout demo: MLServer + sidecar; split, shadow, kill switch, A/B report, gated rollout
	$(PY) examples/demo.py

clean: ## Remove virtual environments and caches
	rm -rf $(VENV) $(MLVENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: help venv venv-mlserver generate check-generated lint check-deploy image image-size test test-unit bench demo clean
