# iotpipe: `make run` (the whole pipeline on this machine) and `make test` (the whole suite).
# Every target installs what it needs on a fresh machine: the venv, Kafka's and Spark's jars.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' local/maven/kafka/pom.xml)
SPARK_VERSION := $(shell sed -n 's:.*<spark.version>\(.*\)</spark.version>.*:\1:p' local/maven/spark/pom.xml)
KAFKA_JARS := .cache/kafka-$(KAFKA_VERSION)/.stamp
SPARK_JARS := .cache/spark-kafka-$(SPARK_VERSION)/.stamp
PYTEST_ARGS ?=
# e.g. BENCH_ARGS="--only query" re-runs one section of docs/benchmarks.md
BENCH_ARGS ?=

.PHONY: install run up down stop status clean test lint unit integration bench \
	images images-down images-engine

install: $(VENV)/.stamp $(KAFKA_JARS) $(SPARK_JARS)

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[stream,dev]'
	@touch $@

$(KAFKA_JARS): local/maven/kafka/pom.xml
	mvn -q -B -f local/maven/kafka/pom.xml dependency:copy-dependencies
	@touch $@

$(SPARK_JARS): local/maven/spark/pom.xml
	mvn -q -B -f local/maven/spark/pom.xml dependency:copy-dependencies
	@touch $@

# Broker, topics, sensors, query API (and the streaming app) in the foreground; Ctrl-C stops all.
run: install
	$(PY) -m iotpipe run

# The same stack detached; `up` returns once the API answers /health.
up: install
	$(PY) -m iotpipe up

down:
	@if $(PY) -c 'import iotpipe' 2>/dev/null; then $(PY) -m iotpipe down; \
	else echo "nothing to stop (no venv with iotpipe: an install never finished)"; fi

stop: down

status: install
	$(PY) -m iotpipe status

clean: down images-down
	rm -rf $(VENV) .cache .data .tools .pytest_cache .ruff_cache .mypy_cache .hypothesis .schemathesis services/*.egg-info

lint: install
	$(VENV)/bin/ruff check services tests charts docker
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: install
	$(PY) -m pytest tests --ignore=tests/unit --ignore=tests/k8s --ignore=tests/images -q $(PYTEST_ARGS)

# The whole suite: lint, unit + integration (real Kafka, real gunicorn, real Spark), k8s offline,
# the images built and run (tests/images).
test: install lint tools images-engine
	K8S_TOOLS=$(abspath $(TOOLS)) $(PY) -m pytest tests -q $(PYTEST_ARGS)

# Speed and memory figures (a table with a same-run baseline and ratios) -> docs/benchmarks.md.
bench: install
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[stream,dev,bench]'
	command -v wrk >/dev/null || scripts/apt-install wrk
	$(PY) -m iotpipe.bench --out docs/benchmarks.md $(BENCH_ARGS)

include k8s.mk

# The three images with the chart's names and tags, on DOCKER_HOST's engine or a private one
# (data root and stand-in bases cached in ~/.cache/iotpipe/docker); `images-down` stops it.
images: install images-engine
	$(PY) docker/images.py build

images-down:
	@test -x $(PY) && $(PY) docker/images.py down || true

# Debian's Docker Engine and mmdebstrap (stand-in bases); the package must not start a daemon.
images-engine:
	@command -v dockerd >/dev/null && command -v mmdebstrap >/dev/null || \
		scripts/apt-install docker.io mmdebstrap
