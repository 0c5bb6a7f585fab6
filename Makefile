# Artifact Store — `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help run test test-big-blob lint typecheck protos protos-check test-deps bench bench-deps clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed ## install everything into .venv and serve the whole mesh (ARTIFACT_STORE_ADDRESS, default 0.0.0.0:7111)
	$(BIN)/artifact-store serve

test-deps: ## install what the tests drive: registry clients, and Ceph for object storage (Debian packages, as root)
	@missing=""; for p in skopeo podman ceph-mon ceph-osd radosgw; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench-deps: ## install what the benchmark runs besides Python: Distribution and skopeo (Debian packages, as root)
	@missing=""; for p in docker-registry skopeo; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench: $(VENV)/.installed bench-deps ## Artifact Store vs CNCF Distribution side by side, ~10 min (BENCH_ARGS="--rounds 5 --scaling --storage s3 --profile DIR …")
	$(BIN)/python -m bench $(BENCH_ARGS)

protos: $(VENV)/.installed ## regenerate the Python code of protos/ into artifactstore/<svc>/v1/
	$(BIN)/python scripts/gen_protos.py

protos-check: $(VENV)/.installed ## fail when the generated code is stale
	$(BIN)/python scripts/gen_protos.py --check

lint: $(VENV)/.installed ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed ## mypy over the whole project
	$(BIN)/mypy .

# Run a second time with every instance's blobs on Ceph: the real clients and GC's race.
E2E_ON_CEPH := tests/e2e/test_skopeo.py tests/e2e/test_podman.py tests/e2e/test_oras.py \
	tests/e2e/test_gc.py::test_race_pushes_and_deletes_against_continuous_gc

test: $(VENV)/.installed test-deps protos-check lint typecheck ## everything CI runs: deps, fresh protos, lint, types, the whole test suite inside a throw-away Ceph cluster (S3 tests), then the real-client e2e tests and GC's race again with blobs on Ceph
	scripts/ceph run sh -c '$(BIN)/pytest $(PYTEST_ARGS); all=$$?; \
		ARTS_TEST_E2E_STORAGE=s3 $(BIN)/pytest $(PYTEST_ARGS) $(E2E_ON_CEPH); ceph=$$?; \
		[ $$all -eq 0 ] && [ $$ceph -eq 0 ]'

test-big-blob: $(VENV)/.installed test-deps ## a 6 GiB blob pushed and pulled through the mesh onto a fresh Ceph cluster (minutes): timings, peak memory
	ARTS_TEST_BIG_BLOB_GIB=6 scripts/ceph run $(BIN)/pytest -s tests/s3/test_big_blob.py

clean: ## remove the virtualenv and local data
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
