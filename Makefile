# `make demo` and `make test` each set up .venv from a bare Python 3.11 on their own.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test lint test-slow bench docs install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (once): pip installs TensorFlow, Keras and the test tools, a few minutes on a fresh machine."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --progress-bar on --config-settings editable_mode=compat -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/penguins_demo.py

# Two pytest workers (CI has 2 cores); a test file stays on one worker, so its module fixtures are built once.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e ".[test,docs]"
	touch $(DOCS_STAMP)

# The documentation site (mkdocs.yml, docs/) into site/; warnings are errors.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info
