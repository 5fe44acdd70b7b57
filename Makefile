# Two commands do everything on a fresh Debian machine with Python 3.11 (no GPU needed):
#   make reproduce   run every notebook in order (quick profile), write figures/ and runs/quick/
#   make test        the unit tests plus every notebook in the smoke profile
# Each creates .venv if needed, installs the pinned dependencies and the package (editable),
# and installs the offline Fashion-MNIST (Debian package) where apt can.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROFILE ?= quick
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=
ARGS ?=

# Debian's Chromium and ChromeDriver for the book's browser tests, pinned (make browser).
CHROMIUM_VERSION ?= 156.0.8078.114-1~deb12u1
# How this Makefile runs apt-get: as root, or with passwordless sudo; SUDO=none when it cannot.
AS_ROOT = if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi

.PHONY: help setup data browser reproduce grid bundle import-bundle lint test test-quick test-paper lab strip clean-cache assignments grade book

help:
	@echo "make reproduce   run all notebooks (PROFILE=$(PROFILE), more options in ARGS=...) into runs/$(PROFILE)/; quick: figures/ too"
	@echo "make grid        Table 1's cells in parallel on Dask workers (PROFILE=$(PROFILE); ARGS=\"--workers 2\", --address ...)"
	@echo "make bundle      the cache entries of the notebooks' last runs in one file for a class (PROFILE=$(PROFILE))"
	@echo "make import-bundle BUNDLE=file.zip   check a bundle, then place its entries in the cache (.cache/)"
	@echo "make test        the linter, then unit tests + every notebook in the smoke profile"
	@echo "make lint        ruff on the package, tests, benchmarks and notebooks (make test runs it first)"
	@echo "make test-quick  slower checks of real quick-profile results"
	@echo "make test-paper  the paper-profile GPU check (skipped without CUDA)"
	@echo "make lab         JupyterLab on notebooks/"
	@echo "make strip       strip outputs from notebooks/*.ipynb"
	@echo "make assignments student notebooks, autograders and solutions in runs/assignments/ (PROFILE=smoke unless set)"
	@echo "make book        the course as a website from the executed notebooks of figures/executed/: runs/book/_build/html"
	@echo "make grade       grade submissions: make grade AUTOGRADER=runs/assignments/autograder/00_overview-autograder.zip SUBMISSIONS=folder"

# The virtual environment, rebuilt whenever pyproject.toml changes (the stamp names its checksum).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) data

# Fashion-MNIST from Debian's package, where apt can install it (root, or passwordless sudo).
# Skipped when TSBD_DATA_DIR is set or the files are already there.
data:
	@if [ -n "$$TSBD_DATA_DIR" ] || [ -f $(FMNIST) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: apt-get not found; get Fashion-MNIST yourself and set TSBD_DATA_DIR (see README.md)"; exit 0; fi; \
	$(AS_ROOT); \
	if [ "$$SUDO" = none ]; then \
		echo "note: installing dataset-fashion-mnist needs root: sudo apt-get install dataset-fashion-mnist"; exit 0; fi; \
	echo "installing dataset-fashion-mnist (Debian package, about 30 MB)"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
		|| echo "warning: apt-get could not install dataset-fashion-mnist; see README.md for other ways to get it"

# Chromium and its driver from Debian's packages at CHROMIUM_VERSION, where apt can install them (root, or
# passwordless sudo). A security update removes the old version from Debian's archive; the current one is then
# installed instead, and this says so. tests/test_book.py fails (and says why) where neither could be installed.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "note: apt-get not found; install Chromium and ChromeDriver for the book's browser tests"; exit 0; fi; \
	$(AS_ROOT); \
	if [ "$$SUDO" = none ]; then \
		echo "note: the book's browser tests need root once: sudo apt-get install chromium chromium-driver"; exit 0; fi; \
	echo "installing chromium and chromium-driver $(CHROMIUM_VERSION) (Debian packages, about 300 MB)"; \
	$$SUDO apt-get update -qq; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium=$(CHROMIUM_VERSION) chromium-driver=$(CHROMIUM_VERSION) >/dev/null \
	|| { echo "warning: chromium $(CHROMIUM_VERSION) has left Debian's archive; installing its current version"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	|| echo "warning: apt-get could not install chromium; the book's browser tests will fail"

reproduce: setup
	$(PY) -m tsbd_utils.reproduce --profile $(PROFILE) $(ARGS)

grid: setup
	$(PY) -m tsbd_utils.grid --profile $(PROFILE) $(ARGS)

# Bundles of the cache (notebooks/INSTRUCTORS.md): the instructor exports after `make reproduce`; a learner imports.
bundle: setup
	$(PY) -m tsbd_utils.bundle export --profile $(PROFILE) $(ARGS)

import-bundle: setup
	@test -n "$(BUNDLE)" || { echo "usage: make import-bundle BUNDLE=<bundle .zip> [ARGS='--cache-dir DIR']"; exit 2; }
	$(PY) -m tsbd_utils.bundle import "$(BUNDLE)" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tsbd_utils tests benchmarks notebooks

test: setup browser lint
	$(PY) -m pytest -m "not slow and not paper" $(PYTEST_ARGS)

test-quick: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-paper: setup
	$(PY) -m pytest -m paper $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# Course assignments (otter-grader): the handouts run in the smoke profile unless PROFILE is given on the command line.
assignments: setup
	$(PY) -m tsbd_utils.assignments generate --profile $(if $(filter command line,$(origin PROFILE)),$(PROFILE),smoke) $(ARGS)

grade: setup
	@test -n "$(AUTOGRADER)" -a -n "$(SUBMISSIONS)" || { echo "usage: make grade AUTOGRADER=<autograder zip> SUBMISSIONS=<folder of .ipynb> [ARGS='--csv scores.csv']"; exit 2; }
	$(PY) -m tsbd_utils.assignments grade "$(AUTOGRADER)" "$(SUBMISSIONS)" $(ARGS)

# The website: the executed quick-profile notebooks (figures/executed/, refreshed by make reproduce) as a Jupyter
# Book, built offline without executing anything.
book: setup
	$(PY) -m tsbd_utils.book build $(ARGS)

strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean-cache:
	rm -rf .cache runs
