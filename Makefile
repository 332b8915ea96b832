# `make demo` and `make test` work from a fresh clone: they create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean slurm-up browser-up cluster-tools netfs-tools \
	postgres-up

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision come from the registry in one command (pinned pair in constraints.txt)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/clipcl zeroshot --model tiny --benchmark mini-mtil
	$(BIN)/clipcl submit sweeps/demo.yaml --backend local --jobs 2 --follow
	$(BIN)/clipcl results sweeps/demo.yaml
	$(BIN)/clipcl report sweeps/demo.yaml

# The suite in two pytest processes at once: the Slurm and cluster tests, which mostly wait on their
# clusters' clocks, beside the CPU-bound rest (scripts/run-tests.sh says why and how).
test: $(STAMP) slurm-up browser-up cluster-tools netfs-tools postgres-up
	bash scripts/run-tests.sh $(BIN)/python

# A real single-node Slurm for the integration tests, when this user can start one (root); in CI
# (CI=true) failing to start it fails the build.
slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash scripts/slurm-dev.sh up || [ "$$CI" != true ]; \
	elif [ "$$CI" = true ] && ! command -v sinfo >/dev/null; then \
	  echo "CI=true but Slurm cannot be started (not root)" >&2; exit 1; \
	fi

# Debian's chromium for the report's browser test (tests/test_report.py), when this user can
# install it (root); in CI (CI=true) failing to install it fails the build.
browser-up:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	         --no-install-recommends chromium; }; } >/dev/null || [ "$$CI" != true ]; \
	elif [ "$$CI" = true ]; then \
	  echo "CI=true but chromium cannot be installed (not root)" >&2; exit 1; \
	fi

# ip, nsenter, unshare and pgrep for the namespaced clusters of scripts/cluster-dev.sh
# (tests/test_cluster.py), when this user can install them (root); in CI a failure fails the build.
cluster-tools:
	@missing=""; \
	for t in ip:iproute2 nsenter:util-linux unshare:util-linux pgrep:procps; do \
	  command -v "$${t%%:*}" >/dev/null || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	         --no-install-recommends $$missing; }; } >/dev/null || [ "$$CI" != true ]; \
	elif [ -n "$$missing" ] && [ "$$CI" = true ]; then \
	  echo "CI=true but$$missing cannot be installed (not root)" >&2; exit 1; \
	fi

# openssh-server and sshfs for the network-filesystem test (tests/test_netfs.py mounts sshfs from
# a loopback sshd with scripts/netfs-dev.sh), when this user can install them (root); in CI a
# failure fails the build.
netfs-tools:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash scripts/netfs-dev.sh install || [ "$$CI" != true ]; \
	elif [ "$$CI" = true ] && ! command -v sshfs >/dev/null; then \
	  echo "CI=true but sshfs cannot be installed (not root)" >&2; exit 1; \
	fi

# A real PostgreSQL (Debian's packages, its own data directory and port 5433) for the
# PostgreSQL store's tests (tests/test_postgres.py read its URL from `postgres-dev.sh status`),
# when this user can start one (root); in CI a failure fails the build. `scripts/postgres-dev.sh
# down` stops it.
postgres-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { bash scripts/postgres-dev.sh install && bash scripts/postgres-dev.sh up >/dev/null; } \
	    || [ "$$CI" != true ]; \
	elif [ "$$CI" = true ]; then \
	  echo "CI=true but PostgreSQL cannot be started (not root)" >&2; exit 1; \
	fi

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/clipcl

bench: $(STAMP)
	$(BIN)/python bench/world.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/results_table.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/orchestrator.py
	$(BIN)/python bench/dataloader.py
	$(BIN)/python bench/zscl.py --arch tiny --batch 32 --captions 15000
	$(BIN)/python bench/projection.py --arch tiny --batch 32 --images 64 --steps 20

clean:
	rm -rf $(VENV) runs .pytest_cache
