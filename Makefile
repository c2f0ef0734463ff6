# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint format bench clean

# The venv is rebuilt when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/covidxr demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite on up to 4 pytest-xdist workers, a test file per worker (a file's trained fixtures are built once);
# test-fast leaves out the tests marked slow (training, servers, full runs). pytest exits 5 when it collected
# nothing: treat that as a failure, never as a quiet pass.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST  := $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

test: lint
	@$(PYTEST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: lint
	@$(PYTEST) -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks are measurements, not tests: run them on purpose, results land in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_train_step
	$(BIN)/python -m benchmarks.bench_head_loop
	$(BIN)/python -m benchmarks.bench_feature_cache
	$(BIN)/python -m benchmarks.bench_demo
	$(BIN)/python -m benchmarks.bench_search
	$(BIN)/python -m benchmarks.bench_serve
	$(BIN)/python -m benchmarks.bench_inference
	$(BIN)/python -m benchmarks.bench_quality --deconfounded
	$(BIN)/python -m benchmarks.bench_preprocess
	$(BIN)/python -m benchmarks.bench_sites
	$(BIN)/python -m benchmarks.bench_incremental
	$(BIN)/python -m benchmarks.bench_scale --sizes 10000

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache demo-out
