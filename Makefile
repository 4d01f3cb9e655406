# The two commands people need: `make run` (the dashboard, with a worker) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-packages run test bench lint format clean static

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(BIN)/.installed

# Installs what the local provider needs (bubblewrap; a C compiler for its sandbox init;
# libseccomp-dev for its seccomp filter; passt (pasta) and nftables for sandboxes with an
# outbound network; mmdebstrap and skopeo to build and import images) when it can; says what
# to install when it cannot (not root, no apt-get).
system-packages:
	@scripts/ensure-system-packages bubblewrap gcc libc6-dev libseccomp-dev passt nftables \
	  mmdebstrap skopeo

# DEBUG stays off unless you set it (DEBUG=1 make run): its error pages show the server's
# environment.
run: install system-packages
	$(BIN)/python manage.py serve

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	DEBUG= $(BIN)/python manage.py makemigrations --check --dry-run --settings=config.settings_test
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null --settings=config.settings_test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# wrk is the API benchmark's load generator (without it, a slower Python client is used).
bench: install system-packages
	@scripts/ensure-system-packages wrk || echo "no wrk: bench_api uses its Python load generator"
	@scripts/ensure-system-packages openssh-client openssh-server || echo "no OpenSSH: bench_ssh cannot run"
	$(BIN)/python -m bench

# Rebuilds static/vendor/ (xterm.js) from the npm registry, as package-lock.json pins it.
# Its output is committed: `make run` and production never need npm or the network.
static:
	scripts/build-static

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
