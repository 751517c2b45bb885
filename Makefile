# The two front-door commands: `make test` and `make demo`.
PY := .venv/bin/python
PIP := .venv/bin/pip

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

# The browser test drives Debian's Chromium (Playwright cannot download its own
# here); installed only when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

.PHONY: setup lint format test test-slow demo bench
setup: .venv/.installed

# ruff (pinned in the test extra): formatting and lint, enforced by `make test`.
lint: .venv/.installed
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

format: .venv/.installed
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# One test process per core (pytest-xdist), each test file in one process so
# that its module fixtures (servers, compiled models) are made once.
test: lint $(CHROMIUM)
	$(PY) -m pytest -q -n auto --dist loadfile

test-slow: .venv/.installed
	$(PY) -m pytest -q -m slow

demo: .venv/.installed
	.venv/bin/ddpm-jax demo

bench: .venv/.installed
	$(PY) bench/sampling.py
