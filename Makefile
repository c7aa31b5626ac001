# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
MODEL_ENV := .venv-triton
PIP_FLAGS ?= -q
# Test sessions side by side (pytest-xdist), each with Kafka and Triton of its own, a test file each at a time.
PYTEST_WORKERS ?= 2
# helm, for linting and rendering the chart (deploy/helm/); built from its Go module.
HELM_VERSION ?= v4.3.2
HELM := .tools/bin/helm

.PHONY: setup demo test bench up down lint clean redis-server prometheus docker-compose

setup: $(VENV)/.installed $(MODEL_ENV)/.installed deploy/kafka/.libs/.complete .triton/.installed redis-server prometheus docker-compose $(HELM)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

# Triton's Python backend needs numpy<2 in the model's environment; the app needs numpy 2 (Feast).
# The model env holds numpy<2 and borrows torch from the app env through a .pth placed after
# its own site-packages, so there is one torch on disk and numpy<2 wins in the model env.
$(MODEL_ENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(MODEL_ENV)
	$(MODEL_ENV)/bin/pip install $(PIP_FLAGS) 'numpy==1.26.4'
	$(VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > $$($(MODEL_ENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_app_site_packages.pth
	$(MODEL_ENV)/bin/python -c "import numpy, torch; assert numpy.__version__ < '2', numpy.__version__"
	touch $@

deploy/kafka/.libs/.complete: deploy/kafka/pom.xml
	rm -f $@
	bash deploy/kafka/kafka.sh fetch

.triton/.installed:
	PYTHON=$(VENV)/bin/python bash deploy/triton/triton.sh install
	touch $@

# Redis backs the Feast online store's production option (and its outage test); Debian's package.
redis-server:
	bash deploy/redis/redis.sh install

# promtool checks and unit-tests the alerting rules (deploy/prometheus/); Debian's package.
prometheus:
	bash deploy/prometheus/prometheus.sh install

$(HELM):
	GOBIN=$(CURDIR)/.tools/bin go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

# `docker-compose config` checks docker-compose.yml without an engine; Debian's package.
docker-compose:
	bash deploy/compose/compose.sh install

demo: setup
	$(VENV)/bin/pipeline demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every benchmark scenario in one run: table, bench-results/bench.json and bench.png (docs/performance.md).
bench: setup
	$(VENV)/bin/pipeline bench $(BENCH_ARGS)

up: setup
	$(VENV)/bin/pipeline stack up

down:
	$(VENV)/bin/pipeline stack down

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean: down
	rm -rf .run feature_repo/data triton_models/*/[0-9]*/model.pt triton_models/*/[0-9]*/metrics.json
