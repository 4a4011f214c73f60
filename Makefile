# The two commands a new user needs: `make demo` (the three tasks on bundled data) and
# `make test`. Both create the environment on first use (tools/setup_env.sh: a cached venv
# outside the repository, linked as .venv) and reuse it afterwards.
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env test demo clean

env:
	@bash tools/setup_env.sh

test: env
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: env
	@bash tools/demo.sh

clean:
	rm -rf work_dirs/demo data/demo .pytest_cache
