# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch + torchvision pinned as a pair: this pair loads together (see shared NOTES).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install browser demo up test lint bench-deps clean

$(BIN)/lookalike: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/lookalike

demo: install
	$(BIN)/lookalike demo $(ARGS)

up: install
	$(BIN)/lookalike up $(ARGS)

# The web page test drives Debian's Chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

test: install browser
	$(BIN)/pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Extra packages only the benchmarks compare against (ChromaDB in bench/index_scale.py).
bench-deps: install
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'

clean:
	rm -rf .lookalike .pytest_cache .mypy_cache
