# Two entry points: `make run` (the main job) and `make test`. Both create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m trainer $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)

# The step-time benchmark (benchmarks/step_time.py): with the same .venv (the 'bench'
# extra brings matplotlib and jax + optax for the JAX peer), times fit vs tapefit vs
# JAX; outputs in out/bench. ARGS passes flags.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.step_time $(ARGS)
