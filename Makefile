# chatnode: `make run` starts a node on config.toml; `make test` runs every test;
# `make lint` runs ruff and mypy.
# They set themselves up on a fresh machine (a virtualenv in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench setup clean browser postgres screenshot cluster netns proxies

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chatnode serve --config config.toml

# Debian packages the tests need, installed with apt-get (through sudo unless run as root).
# The tests start their own servers; RUNLEVEL=1 asks the packages' init scripts not to start
# theirs (invoke-rc.d honours it without systemd; under systemd they may start as usual).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); $$SUDO apt-get update -q && $$SUDO env RUNLEVEL=1 apt-get install -y -q --no-install-recommends

# The web client's tests drive Debian's Chromium (never a browser Playwright downloads); an
# emoji font makes the emoji picker's screenshots readable (the tests do not need it).
browser:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'color emoji'; } || { \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "no chromium and no apt-get: the browser tests will be skipped"; exit 0; fi; \
	  $(APT_INSTALL) chromium fonts-noto-color-emoji; }

# The PostgreSQL engine's tests start private servers (tests/pgserver.py) from Debian's
# postgresql-15 binaries, as the postgres user when run as root; the packaged cluster
# itself is never used.
PG_BIN := /usr/lib/postgresql/15/bin
postgres:
	@test -x $(PG_BIN)/initdb || { \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "no $(PG_BIN)/initdb and no apt-get: install PostgreSQL 15"; exit 1; fi; \
	  $(APT_INSTALL) postgresql-15; }

# Three nodes, their PostgreSQL and an object store for media, all in ./cluster (docs/cluster.md).
cluster: $(STAMP) postgres
	$(PY) tools/local_cluster.py

# The partition test (tests/cluster/test_partition.py) splits nodes inside a network
# namespace of its own: it needs `ip` and `unshare` (and root; it is skipped otherwise).
netns:
	@{ command -v ip >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1; } || [ "$$(id -u)" -ne 0 ] || { \
	  command -v apt-get >/dev/null 2>&1 && apt-get update -q && apt-get install -y -q --no-install-recommends iproute2 util-linux; } || \
	  echo "no ip/unshare: the partition test will be skipped"

# The reverse-proxy examples (contrib/nginx.conf, contrib/Caddyfile) are tested against
# Debian's nginx and caddy.
proxies:
	@{ command -v nginx >/dev/null 2>&1 && command -v caddy >/dev/null 2>&1; } || { \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "no nginx/caddy and no apt-get: their tests will be skipped"; exit 0; fi; \
	  $(APT_INSTALL) nginx caddy; }

# --durations: the slowest tests are listed at the end, to keep an eye on the suite's time.
# TEST_WORKERS=2 runs the tests in two processes (pytest-xdist), each taking whole test files:
# about 17-18 minutes on two cores, against about 29 in one. It stays off by default: the
# rolling-restart test's bound on retried sends (5) was exceeded once (6) with two at once.
TEST_WORKERS ?= 0
test: $(STAMP) browser postgres netns proxies
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# ruff and mypy come with the test extras; mypy reads its settings from pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check node tests bench tools
	$(VENV)/bin/mypy

# The README's screenshot (docs/screenshot.png) is the browser tests' "09-overview" shot.
screenshot: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider -m browser -k test_photo_audio_and_video_are_sent_shown_and_playable
	cp test-artifacts/09-overview.png docs/screenshot.png

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_RUN_ARGS)
	$(PY) -m bench.groups
	$(PY) -m bench.media
	$(PY) -m bench.cluster

clean:
	rm -rf $(VENV) data cluster .pytest_cache
