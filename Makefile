# Two commands on a fresh machine: `make demo` and `make test` (both offline once installed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench gradcheck docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned to the CPU build (torch==2.13.0); it is only used by the tests' references.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ep-jax train

test: $(STAMP)
	$(BIN)/python -m pytest -q

gradcheck: $(STAMP)
	$(BIN)/ep-jax gradcheck --energy hopfield --rule ep-symmetric --beta 1e-3 --x64

# Scratch results under runs/ (ignored by git), replaced on every run; the committed ones in
# benchmarks/results/ are only written when asked (--overwrite).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.suite --suite quick --json runs/bench/quick.json \
		--markdown runs/bench/quick.md --plots-dir runs/bench/quick_plots --overwrite

# The documentation site, offline, into site/ (open site/index.html); warnings are errors.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache site
