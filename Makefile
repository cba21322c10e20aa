# llm-bentos: `make` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
MODELS := $(sort $(notdir $(wildcard models/*)))

.DEFAULT_GOAL := help
.PHONY: help install lock generate check test tiny-model new verify-revisions serve demo build containerize deploy bench stack-cost

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  models: $(MODELS)"

install: ## create .venv with the pinned versions of constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q --upgrade "pip==26.3"
	$(PY) -m pip install --progress-bar off -r requirements-dev.txt -c constraints.txt
	@# PyPI's torchvision/torchaudio break imports beside the CPU build of torch.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@$(PY) -c "import vllm, bentoml; print('installed vllm', vllm.__version__, 'and bentoml', bentoml.__version__)"

lock: ## rewrite constraints.txt from the current .venv
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new && mv constraints.txt.new constraints.txt

generate: ## render models/ from catalog.yaml and templates/
	$(PY) scripts/generate.py

check: ## fail if models/ differs from what the catalog and templates produce
	$(PY) scripts/generate.py --check

test: ## run the whole test suite
	$(PY) -m pytest

tiny-model: ## put the offline tiny test model into the BentoML model store
	$(PY) scripts/tiny_model.py

new: ## add a model: make new MODEL_ID=<hf id | folder> [NAME=] [GPU=[N x]type|cpu] [MAX_MODEL_LEN=] [REVISION=]
	@$(PY) scripts/new_model.py "$(MODEL_ID)" $(if $(NAME),--name "$(NAME)") $(if $(GPU),--gpu "$(GPU)") \
		$(if $(MAX_MODEL_LEN),--max-model-len $(MAX_MODEL_LEN)) $(if $(REVISION),--revision "$(REVISION)") $(NEW_ARGS)

verify-revisions: ## ask the Hub (or HF_ENDPOINT) whether every pinned revision in catalog.yaml exists
	@$(PY) scripts/verify_revisions.py $(VERIFY_ARGS)

model-dir = models/$(MODEL)
require-model = @$(PY) scripts/bento.py require "$(MODEL)"

serve: ## serve one model: make serve MODEL=name [PORT=3000]
	$(require-model)
	@if [ "$(MODEL)" = tiny-dev ]; then $(PY) scripts/tiny_model.py; fi
	cd $(model-dir) && ../../$(VENV)/bin/bentoml serve . --port $(PORT)

demo: ## serve tiny-dev, ask it one question with the openai client, stop
	$(PY) scripts/demo.py --port $(PORT)

build: ## build the Bento of one model and print its tag: make build MODEL=name
	@$(PY) scripts/bento.py build "$(MODEL)"

containerize: ## build the Bento and its OCI image (needs a running Docker or Podman)
	@$(PY) scripts/bento.py containerize "$(MODEL)"

SCALING_MIN ?= 0
SCALING_MAX ?= 2
SECRET ?= huggingface
deploy: ## deploy to BentoCloud: make deploy MODEL=name [SCALING_MIN=0 SCALING_MAX=2] [SECRET=huggingface] [DRY_RUN=1]
	@$(PY) scripts/bento.py deploy "$(MODEL)" --scaling-min $(SCALING_MIN) --scaling-max $(SCALING_MAX) --secret "$(SECRET)" $(if $(DRY_RUN),--dry-run,)

bench: ## Bento vs plain vLLM on the same weights, one server at a time: make bench [MODEL=tiny-dev] [BENCH_ARGS="--runs 5"]
	$(PY) scripts/bench.py --model $(or $(MODEL),tiny-dev) $(BENCH_ARGS)

stack-cost: ## CPU per request of each BentoML layer in a generated service, without vLLM: make stack-cost [MODEL=tiny-dev]
	$(PY) scripts/stack_cost.py --model $(or $(MODEL),tiny-dev)
