# Set up and run everything on a fresh machine: `make quickstart` (the main job), `make test` (the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# Reference implementations that parity tests run against, installed without their dependency trees
# (the code the tests call needs only packages already in the dev extra).
NODEPS_REFS := 'clip_benchmark>=1.6' clip-retrieval==2.45.0

.PHONY: install quickstart test lint sysdeps benchdeps bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	$(PIP) install --quiet --no-deps $(NODEPS_REFS)
	touch $@

install: $(STAMP)

# Debian packages some features use: headless Chromium (web-page test) and WordNet's database files
# (MetaCLIP metadata). Installed when missing and we are root; otherwise those tests skip with a note.
SYSDEPS := chromium:/usr/bin/chromium wordnet-base:/usr/share/wordnet/data.noun
# $(call apt_install,package:file ...): apt-get install the packages whose file is missing, when root.
define apt_install
	@missing=""; for dep in $(1); do [ -e "$${dep#*:}" ] || missing="$$missing $${dep%%:*}"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
		|| echo "note: could not install$$missing; what needs them will be skipped"; \
	else echo "note: missing$$missing (not root); what needs them will be skipped"; fi
endef

sysdeps:
	$(call apt_install,$(SYSDEPS))

# wrk (a C load generator) for benchmarks/serve.py, which falls back to an httpx client without it.
benchdeps:
	$(call apt_install,wrk:/usr/bin/wrk)

quickstart: install
	$(VENV)/bin/clipstack quickstart

lint: install
	$(VENV)/bin/ruff check .
	@if [ -f ../shared/tools/check_layout.py ]; then $(PY) ../shared/tools/check_layout.py src/clipstack; fi

test: install sysdeps lint
	CLIPSTACK_NO_PROGRESS=1 $(PY) -m pytest

bench: install benchdeps
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
