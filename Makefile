# Two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the main job: drain a run end to end on SQLite with the offline replay model
	$(BIN)/autopack demo

# Three pytest workers on two cores: most tests wait on servers and subprocesses, so a
# third overlaps that waiting (BENCHMARKS.md, "The test suite": 12:31 against 13:58 with
# two); an idle worker steals queued tests from a busy one, so all finish together.
test: $(STAMP)  ## the whole test suite, SQLite and PostgreSQL
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench tools
	$(BIN)/ruff format --check src tests scripts bench tools
	$(BIN)/mypy

bench: $(STAMP)  ## the numbers in BENCHMARKS.md (several minutes; run on an idle machine)
	$(BIN)/python -m bench.control_plane
	$(BIN)/python -m bench.executor_concurrency --backends sqlite,postgresql

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
