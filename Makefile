# Set-up, tests and the demo. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist processes for the suite: three on the 2-core machine it is timed on, as many tests wait on a server,
# a cluster or a subprocess while the others compute
TEST_WORKERS ?= 3

.PHONY: install test test-fast demo clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# $(TEST_WORKERS) processes, one test file each at a time (a file's module fixtures, such as a trained run, are made once),
# the slowest files first (tests/conftest.py's SLOWEST_FILES); then, alone, the two cluster tests timed against the
# wall clock (marked serial; SERIAL_FILES holds them: collecting only that file spares the second run's start 6 s).
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
SERIAL_FILES := tests/test_distribute.py
test: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not serial"
	$(BIN)/python -m pytest -q -m serial $(SERIAL_FILES)

# The edit loop: everything but the tests marked slow (those that train models), in under 2 minutes.
test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

# Generate a small 3-class dataset, train on it (EfficientNet-Lite0's ImageNet weights, from pip), predict, export.
demo: install
	$(BIN)/python datasets/shapes.py datasets/shapes --per-class 150
	$(BIN)/transfer inspect datasets/shapes
	$(BIN)/transfer train datasets/shapes --name demo --overwrite
	$(BIN)/transfer predict models/demo datasets/shapes/circle/0000.jpg datasets/shapes/square/0000.jpg \
		datasets/shapes/triangle/0000.jpg --top-k 2
	$(BIN)/transfer export models/demo

clean-demo:
	rm -rf datasets/shapes models/demo models/demo.partial
