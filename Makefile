# The Python to use: the project's .venv when .ci/setup had to make one, else python3.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: demo setup test

demo:
	$(PYTHON) -m pip install -q -e .
	$(PYTHON) -m replicator demo

setup:
	PYTHON=$(PYTHON) bash .ci/setup

# A prerequisite, not a first recipe line, so PYTHON is chosen after setup has run.
test: setup
	$(PYTHON) -m pytest -q -n 2 --dist loadfile
