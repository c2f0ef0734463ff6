# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean

# The venv is rebuilt when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/covidxr demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when it collected nothing: treat that as a failure, never as a quiet pass.
test: lint
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks are measurements, not tests: run them on purpose, results land in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_train_step
	$(BIN)/python -m benchmarks.bench_feature_cache
	$(BIN)/python -m benchmarks.bench_demo
	$(BIN)/python -m benchmarks.bench_search
	$(BIN)/python -m benchmarks.bench_serve
	$(BIN)/python -m benchmarks.bench_quality --deconfounded
	$(BIN)/python -m benchmarks.bench_preprocess

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache demo-out
