# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Rebuilt when the dependency files change (or the venv is missing or broken).
STAMP  := $(VENV)/.detlab-installed
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_WORKERS ?= 2

.PHONY: all venv test test-fast lint demo clean browser-deps reference-deps

all: test

$(STAMP): pyproject.toml constraints.txt
	@$(BIN)/python -c "import sys" 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PIP_INSTALL) -e '.[dev]'
	$(MAKE) reference-deps
	@touch $(STAMP)

# The test-time references, never imported by detlab (tests/reference/__init__.py has the details):
# - mmcv 1.7.2's Python sources: the reference for the runtime (LR and momentum schedules,
#   optimizer constructors, EMA) and what MMDetection 2.28 runs on. Its sdist needs a setuptools
#   that still has pkg_resources to build; --no-deps keeps its opencv-python out of the venv.
# - MMDetection 2.28.2's wheel (--no-deps: it would ask for mmcv-full), which ships every zoo
#   config under mmdet/.mim/configs, plus the pure-Python packages it imports (terminaltables,
#   scipy, six). mmcv's compiled ops are replaced at test time by tests/reference/mmcv_ext.py.
reference-deps:
	@$(BIN)/python -c "import mmcv.runner" 2>/dev/null || \
		PIP_CONSTRAINT=$(CURDIR)/tests/reference-build-constraints.txt \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mmcv==1.7.2 \
		&& $(PIP_INSTALL) addict yapf
	@$(BIN)/python -c "import importlib.metadata as m, terminaltables, scipy, six; \
		assert m.version('mmdet') == '2.28.2'" 2>/dev/null || { \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mmdet==2.28.2 \
		&& $(PIP_INSTALL) terminaltables scipy six; }

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# The browser test drives JupyterLab in Debian's Chromium (Playwright is in the dev extras).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium (needs root): the browser test will fail" >&2

# Every check, slow ones included (CI runs this through .ci/run).
test: lint browser-deps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) tests

# The quick loop while editing: skips tests marked slow.
test-fast: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" tests

# The main job: notebooks/00_quickstart.ipynb run headless by papermill into runs/quickstart/
# (generate the shapes data, train RetinaNet, evaluate, draw); prints the final metrics.
demo: $(STAMP)
	$(BIN)/detlab nb run notebooks/00_quickstart.ipynb runs/quickstart/00_quickstart.ipynb \
		-p work_dir runs/quickstart/work_dir -p data_root runs/quickstart/shapes

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache build *.egg-info
