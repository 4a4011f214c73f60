# The two commands a new user needs: `make demo` (the three tasks on bundled data) and
# `make test`. Both create the environment on first use (tools/setup_env.sh: a cached venv
# outside the repository, linked as .venv) and reuse it afterwards.
PYTHON := .venv/bin/python
# Two test workers (pytest-xdist), one per core of the reference machine; a test file stays on
# one worker, so its module fixtures are built once.
PYTEST_ARGS ?=

.PHONY: env test demo clean

env:
	@bash tools/setup_env.sh

test: env
	$(PYTHON) -m pytest tests -n 2 --dist loadfile $(PYTEST_ARGS)

demo: env
	@bash tools/demo.sh

clean:
	rm -rf work_dirs/demo data/demo .pytest_cache
