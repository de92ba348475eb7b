# The two commands of the README:
#   make demo   installs into .venv and runs the live demo (1 producer -> many consumers)
#   make test   installs into .venv and runs the test suite against the installed package
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LEGACY := .side/tq0.5.2

.PHONY: install demo test typecheck chaos wheel wheel-aarch64 workflows bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q ".[test,bench,msgpack,cli,kafka,metrics]"

$(LEGACY)/turbo_queue/_turbo_queue.py:
	$(PY) -m pip install -q --no-deps --target $(LEGACY) turbo-queue==0.5.2

demo: install
	$(PY) -m turbo_queue demo

test: install $(LEGACY)/turbo_queue/_turbo_queue.py
	TURBO_QUEUE_LEGACY_PATH=$(LEGACY) $(PY) -m pytest $(PYTEST_ARGS)

typecheck: install
	$(PY) -m mypy --strict src/turbo_queue examples
	cd /tmp && $(abspath $(PY)) -m mypy.stubtest turbo_queue._core turbo_queue._kafka_codec --allowlist $(abspath stubtest-allowlist.txt)

chaos: install
	$(PY) -m pytest -q -m chaos tests/test_chaos.py tests/test_hostile_folder.py -s

wheel:
	scripts/build-wheel.sh dist

# An aarch64 wheel cross-built here, its tests run under qemu-user (root: apt, debootstrap, chroot).
wheel-aarch64:
	scripts/aarch64-wheel.sh dist-aarch64 $(PYTEST_ARGS)

# The GitHub workflows, checked: actionlint (Go module proxy) and zizmor (PyPI), at pinned versions.
TOOLS := .side/tools
$(TOOLS)/bin/actionlint:
	GOBIN=$(abspath $(TOOLS))/bin GOFLAGS=-modcacherw GOPATH=$(abspath $(TOOLS))/go go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
$(TOOLS)/venv/bin/zizmor:
	$(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install -q zizmor==1.32.0
workflows: $(TOOLS)/bin/actionlint $(TOOLS)/venv/bin/zizmor
	$(TOOLS)/bin/actionlint .github/workflows/*.yml
	$(TOOLS)/venv/bin/zizmor --offline --min-severity informational .github/workflows/

bench: install $(LEGACY)/turbo_queue/_turbo_queue.py
	$(PY) bench/e2e.py --legacy-path $(LEGACY)

clean:
	rm -rf $(VENV) build dist dist-aarch64 src/*.egg-info src/turbo_queue/_core.c src/turbo_queue/_kafka_codec.c src/turbo_queue/*.so
