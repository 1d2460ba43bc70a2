# Two commands do all set-up on a fresh machine:
#   make train   -- runs the main job on the embedded default data
#   make test    -- checks the style (ruff) and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmstruct-installed

.PHONY: train test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m lmstruct.data.assets fetch
	$(PY) -m lmstruct.pretrained.assets fetch
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m lmstruct.cli train --config configs/clip_scenes.py --workdir runs/default

test: $(STAMP)
	$(VENV)/bin/ruff check lmstruct configs tests benchmarks scripts
	$(VENV)/bin/ruff format --check lmstruct configs tests benchmarks scripts
	$(PY) -m pytest -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs .pytest_cache
