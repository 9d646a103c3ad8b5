# Kiln: two commands matter — `make demo` (run the main job) and `make test`.
# Every target builds what it needs from nothing: virtualenv, packages,
# generated protobuf code, the CLIP vocabulary file.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-installed
SHARE := $(VENV)/share/kiln
SAMPLES := $(SHARE)/samples/.complete
SAMPLE_FILES := astronaut.png camera.png chelsea.png coffee.png rocket.jpg motorcycle_left.png
CLIP_VOCAB := $(SHARE)/bpe_simple_vocab_16e6.txt.gz
OPEN_CLIP_WHEEL := open_clip_torch==3.3.0
# The TypeScript SDK (Node 20 and npm), which `make test` builds and drives under Node.
TS_SDK := sdk/typescript
TS_INSTALLED := $(TS_SDK)/node_modules/.kiln-installed
TS_BUILT := $(TS_SDK)/node_modules/.kiln-built
TS_SOURCES := $(wildcard $(TS_SDK)/tsconfig*.json) $(shell find $(TS_SDK)/src $(TS_SDK)/test $(TS_SDK)/examples -name '*.ts' 2>/dev/null)
# The web workbench (web/), built into web/dist, which the gateway serves; the browser its tests drive.
WEB := web
WEB_INSTALLED := $(WEB)/node_modules/.kiln-installed
WEB_BUILT := $(WEB)/dist/index.html
WEB_SOURCES := $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/svelte.config.js $(WEB)/tsconfig.json $(shell find $(WEB)/src -type f 2>/dev/null)
BROWSER := $(VENV)/.kiln-browser
# The offline validators of deploy/ (hadolint, kubectl, kubernetes-validate, checkov, envoy,
# yamllint) in a virtualenv of their own, so their dependencies never meet the services' pins;
# Debian's docker-compose beside them.
DEPLOY_VENV := .venv-deploy
DEPLOY_TOOLS := $(DEPLOY_VENV)/.kiln-installed
DEPLOY_COMPOSE := $(DEPLOY_VENV)/.kiln-compose

.PHONY: setup demo up web test test-deploy scale-out lint protos proto-baseline bench clean

setup: $(STAMP) $(CLIP_VOCAB) $(SAMPLES)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned packages into $(VENV) (log: $(VENV)/install.log)"
	$(PY) -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	$(PY) -m pip install --disable-pip-version-check -e '.[dev]' >> $(VENV)/install.log 2>&1 || (tail -50 $(VENV)/install.log; exit 1)
	$(PY) -m pip check
	touch $@

# Data that ships inside wheels whose code we must not install, taken out of
# the downloaded wheel (scripts/extract_wheel_files.py says why).

$(CLIP_VOCAB): | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/wheels $(OPEN_CLIP_WHEEL) 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) scripts/extract_wheel_files.py $(VENV)/wheels open_clip_torch $(SHARE) open_clip/bpe_simple_vocab_16e6.txt.gz

$(SAMPLES): | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --dest $(VENV)/wheels scikit-image==0.26.0 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) scripts/extract_wheel_files.py $(VENV)/wheels scikit_image $(SHARE)/samples $(addprefix skimage/data/,$(SAMPLE_FILES))
	touch $@

protos: setup $(TS_INSTALLED)
	$(PY) scripts/gen_protos.py
	$(VENV)/bin/buf generate --template buf.gen.typescript.yaml

# The released contracts, which `buf breaking` (tests/test_protos.py) compares the protos
# with. Run on purpose only, when a release accepts every difference, and commit the file.
proto-baseline: setup
	$(VENV)/bin/buf build protos --exclude-source-info -o protos/baseline.binpb

# The whole stack as processes, then a user's session through the gateway with the Python SDK.
demo: setup
	$(PY) -m services.demo $(ARGS)

# The whole stack on embedded defaults until Ctrl-C (what `kiln up` runs).
up: setup $(WEB_BUILT)
	$(PY) -m services.stack $(ARGS)

web: $(WEB_BUILT)

test: setup $(TS_BUILT) $(WEB_BUILT) $(BROWSER)
	$(PY) -m pytest --ignore=tests/deploy

# The deployment artefacts (deploy/), checked offline by the validators, and the scale-out proof.
test-deploy: setup $(DEPLOY_TOOLS) $(DEPLOY_COMPOSE)
	$(PY) -m pytest tests/deploy

# A production-shaped cluster on this machine, faults injected, every invariant checked (as root:
# each part on a network namespace of its own).
scale-out: setup
	$(PY) -m services.scaleout $(ARGS)

$(DEPLOY_TOOLS): deploy/tools-requirements.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	@echo "installing the deploy validators into $(DEPLOY_VENV) (log: $(DEPLOY_VENV)/install.log)"
	$(DEPLOY_VENV)/bin/python -m pip install --disable-pip-version-check -r deploy/tools-requirements.txt \
		> $(DEPLOY_VENV)/install.log 2>&1 || (tail -50 $(DEPLOY_VENV)/install.log; exit 1)
	touch $@

$(DEPLOY_COMPOSE): scripts/install_deploy_tools.sh scripts/apt_install.sh | $(DEPLOY_TOOLS)
	scripts/install_deploy_tools.sh
	touch $@

# Exactly the lock file's packages, again whenever it changes; then the build,
# again whenever a source changes.
$(TS_INSTALLED): $(TS_SDK)/package.json $(TS_SDK)/package-lock.json
	cd $(TS_SDK) && npm ci --no-audit --no-fund
	touch $@

$(TS_BUILT): $(TS_INSTALLED) $(TS_SOURCES)
	cd $(TS_SDK) && npm run --silent build
	touch $@

$(WEB_INSTALLED): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $@

$(WEB_BUILT): $(WEB_INSTALLED) $(TS_BUILT) $(WEB_SOURCES)
	cd $(WEB) && npm run --silent build -- --logLevel warn

$(BROWSER): scripts/install_chromium.sh scripts/apt_install.sh | $(STAMP)
	scripts/install_chromium.sh
	touch $@

lint: setup $(WEB_INSTALLED) $(TS_BUILT)
	cd $(WEB) && npm run --silent check && npm run --silent lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint

bench: setup
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache $(TS_SDK)/node_modules $(TS_SDK)/dist $(TS_SDK)/dist-test
