# Two commands do all set-up on a fresh machine:  make demo  /  make test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages: Fashion-MNIST (demo data) and chromium (browser tests). Skipped where apt is missing.
system-deps:
	@if command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  [ -x /usr/bin/chromium ] || need="$$need chromium"; \
	  if [ -n "$$need" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y $$need || ($$SUDO apt-get update && $$SUDO apt-get install -y $$need); \
	  fi; \
	else echo "apt-get not found: install Fashion-MNIST / chromium yourself (see README)"; fi

demo: $(STAMP) system-deps
	$(VENV)/bin/convlens demo --out runs/demo

test: $(STAMP) system-deps
	$(PY) tools/sz.py
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m slow


bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info
