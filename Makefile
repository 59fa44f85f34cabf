# One-command set-up: `make run` and `make test` create .venv and install what is needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format messages bench train-shapes train-shapes-x4 clean

install: $(STAMP)

# torch goes in first, pinned: an unpinned torch (or one pulled in by diffusers) is a CUDA build
# of several GB. Re-runs only when pyproject.toml changes, so later `make` calls are instant.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy pipeline bot

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Extract every user-facing string into bot/locales/messages.pot and merge it into each
# catalogue; then translate the new entries (msgstr "") in bot/locales/*/LC_MESSAGES/messages.po.
messages: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg --no-location --sort-output --omit-header \
		-k _ -k N_ -k ngettext:1,2 -k locale_str -o bot/locales/messages.pot .
	$(VENV)/bin/pybabel update -i bot/locales/messages.pot -d bot/locales -D messages \
		--no-fuzzy-matching --ignore-obsolete

bench: $(STAMP)
	$(PY) bench/engine.py
	$(PY) bench/executor.py
	$(PY) bench/shapes_quality.py
	$(PY) bench/upscale_quality.py
	$(PY) bench/batch_invariance.py
	$(PY) bench/history.py
	$(PY) bench/cpu_threads.py
	$(PY) bench/compare_fairness.py
	$(PY) bench/ray_scaling.py
	$(PY) bench/real_size.py --quick --compile cuda
	$(PY) bench/model_switch.py --quick

# Retrain the built-in tiny:shapes model into pipeline/shapes/weights (resumes if stopped).
train-shapes: $(STAMP)
	$(PY) -m pipeline.shapes.train

# Retrain the built-in tiny:shapes-x4 upscaler into pipeline/shapes_x4/weights (resumes too).
train-shapes-x4: $(STAMP)
	$(PY) -m pipeline.shapes_x4.train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
