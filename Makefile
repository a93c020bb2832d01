# `make demo` and `make test` create .venv on first use with pinned dependencies.
# torch is installed first from TORCH_SPEC (default: the CPU build torch==2.13.0) so that nothing
# else pulls a multi-GB CUDA build; GPU users pass their own, for example
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed


.PHONY: demo test test-all bench lock procgen clean

$(STAMP): pyproject.toml setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

# One suite on the shared runner (`make bench SUITE=offline_rl ARGS="--dry-run"`), every suite
# (SUITE=all: hours of CPU, then reports/all/index.md); without SUITE, the list of suites.
bench: $(STAMP)
	$(BIN)/workbench bench $(if $(SUITE),$(SUITE) $(ARGS),--list)

# Rewrite the lock from the current venv (after changing dependencies in pyproject.toml).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|grp[-_]workbench)==' > requirements.lock

# procgen has no wheel for Python >= 3.11: install the procgen-mirror wheel and gym3 without their
# stale pins (numpy<2), and their real dependencies from the `procgen` extra.
procgen: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[procgen]'
	$(BIN)/python -m pip install --quiet --no-deps gym3==0.3.3 procgen-mirror==0.10.7
	$(BIN)/python -c "from procgen import ProcgenGym3Env; ProcgenGym3Env(num=1, env_name='maze', start_level=0, num_levels=1); print('procgen OK')"

clean:
	rm -rf $(VENV) runs/demo reports/demo
