# The README's two commands (and the quick tier). Each creates .venv on first use and
# installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m flaxft.main --config configs/pretrain_tiny.py --workdir runs/demo

# One pytest worker per core (pytest-xdist); a test module stays on one worker, so its
# shared trained workdir is made once.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"
