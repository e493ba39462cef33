# AtlasSeg: two commands for a new user.
#   make demo   set up .venv, then segment a synthetic CT phantom with the shipped demo model (offline)
#   make test   set up .venv with the test extras, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first and explicitly: a plain "torch" requirement would pull a multi-GB CUDA build on machines without it.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/atlasseg demo -o demo_output --overwrite

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(VENV)/.installed-test
	$(BIN)/python Testing/bench_pipeline.py

clean:
	rm -rf $(VENV) demo_output
