# QuicFlow developer commands. Everything runs from a project-local venv that
# `make venv` builds from pyproject.toml, so a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv gen test lint typecheck demo cluster-demo bench-cluster certs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Regenerate everything protoc writes: the wire protocol's classes and generated/.
gen: $(STAMP)
	$(PY) scripts/gen.py

## Run the whole test suite (installs what it needs first: as root on Debian/Ubuntu that
## includes the chromium package, with apt-get, for the status page test; see
## scripts/ensure-chromium.sh, and QUICFLOW_SKIP_CHROMIUM=1 to skip it), then
## docs/quickstart.md exactly as written (scripts/test-quickstart.sh), then the
## end-to-end tests once more on the qh3 engine.
##
## pytest runs on PYTEST_WORKERS pytest-xdist workers (default 2: most of the suite's wall
## time is waiting on real loopback timers, not CPU), one test file per worker at a time
## so module fixtures are built once. Tests that measure real-time bounds under faults or
## load (markers `faults`, `serial`) run afterwards, one at a time, as before.
## `make test PYTEST_WORKERS=0` (or plain `pytest`) runs everything serially.
PYTEST_WORKERS ?= 2
ifeq ($(PYTEST_WORKERS),0)
pytest_all = $(1) $(PY) -m pytest -q $(2)
else
pytest_all = $(1) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile \
		-m 'not chaos and not faults and not serial' $(2) \
	&& $(1) $(PY) -m pytest -q -m '(faults or serial) and not chaos' $(2)
endif

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(call pytest_all,,)
	bash scripts/test-quickstart.sh
	@# The end-to-end suite again on the qh3 QUIC engine (tests/e2e/conftest.py).
	$(call pytest_all,QUICFLOW_QUIC_ENGINE=qh3,tests/e2e)
	$(MAKE) --no-print-directory lint

lint: $(STAMP)
	$(VENV)/bin/ruff check quicflow codegen generated examples tests scripts bench
	$(VENV)/bin/ruff format --check quicflow codegen examples tests scripts bench
	$(VENV)/bin/mypy quicflow codegen/quicflow_codegen generated examples tests scripts bench

## Start the example server and client, show every call kind, and stop.
demo: $(STAMP)
	PYTHONPATH=generated $(PY) -m examples.demo

## Cluster mode (docs/cluster.md): NATS and three nodes, clients moving when a node dies.
cluster-demo: $(STAMP)
	PYTHONPATH=.:generated $(PY) -m examples.cluster.main

## Cluster mode measured: cross-node push latency and throughput, CPU, broadcast (docs/cluster.md).
bench-cluster: $(STAMP)
	PYTHONPATH=.:generated $(PY) -m bench.cluster

## Compare QuicFlow with grpc.aio and grpclib and draw the chart (docs/benchmarks.md).
## bench-quick does the same in under a minute, with fewer iterations and clients.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_RUN   := PYTHONPATH=.:generated $(PY) -m bench.run

.PHONY: bench bench-quick chaos scale scale-quick

## The long reliability runs (loss, kill -9 fleets, hostile peers, soak) and every fault test,
## ending with one table of figures (docs/reliability.md); make test runs short versions.
chaos: $(STAMP)
	$(PY) -m pytest -q -m 'chaos or faults' -s -p no:cacheprovider --timeout=1800

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_RUN)
	$(PY) -m bench.chart

bench-quick: $(BENCH_STAMP)
	$(BENCH_RUN) --quick
	$(PY) -m bench.chart

## Ten thousand clients on one server (docs/scale.md): connect, idle, unary, broadcast, a
## server kill -9 and restart, a third of the clients killed, half closing at once; on aioquic
## and qh3. scale-quick does the same with 1,000 clients on aioquic in about 2 minutes.
SCALE_RUN := PYTHONPATH=.:generated $(PY) -m bench.scale

scale: $(BENCH_STAMP)
	$(SCALE_RUN)

scale-quick: $(BENCH_STAMP)
	$(SCALE_RUN) --quick

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
