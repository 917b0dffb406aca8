# Two entry points for people: `make run` and `make test`. Everything installs into .venv/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps proto lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the integration tests start for real (PostgreSQL, Redis, Prometheus, ...).
system-deps:
	bash .ci/system-deps.sh

run: install
	$(BIN)/meterd up

test: install system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

proto: install
	$(BIN)/python -m service.pb.generate

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy  # strict on governance/ and profiling/ (pyproject.toml [tool.mypy])

clean:
	rm -rf $(VENV) .pytest_cache
