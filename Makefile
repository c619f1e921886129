# Common tasks. `make install` is the only set-up step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install constraints train test test-fast lint gpu-check gpu-bundle clean tensorboard serve

install:  ## .venv, pinned torch first (keeps pip from pulling another build), then the project (with MLflow) at versions known to pass
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -c constraints.txt -e ".[dev,tracking]"

# constraints.txt: every package version of an install that passed `make test` (torch aside: `install` pins it, and
# a CUDA machine's build differs from a CPU one's). Refresh: newest versions the floors in pyproject.toml allow, in a
# fresh venv; then run `make install test` and commit constraints.txt if it passes.
constraints:  ## refresh constraints.txt from a fresh install of the newest allowed versions
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --upgrade pip
	.venv-constraints/bin/pip install torch==$(TORCH_VERSION)
	.venv-constraints/bin/pip install -e ".[dev,tracking]"
	{ echo "# Versions known to pass 'make test' (used by 'make install'; torch is pinned there). Refresh: make constraints"; \
	  .venv-constraints/bin/pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt
	rm -rf .venv-constraints

train:  ## the default ViT on MNIST; pass Hydra overrides with ARGS="model.depth=6 trainer.max_epochs=20"
	$(BIN)/python -m vit_mnist.train $(ARGS)

# One pytest-xdist worker per core, at most 4; loadgroup: the tests of one xdist group (a module's shared fixtures,
# the real-data model) on one worker, the rest spread test by test
XDIST = -n auto --maxprocesses=4 --dist loadgroup
test: lint  ## the import contracts, then the whole suite; slow tests run when the real data is found
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: lint  ## without the slow tests
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

lint:  ## the layer contracts of pyproject.toml: entry points -> library packages -> errors (import-linter)
	$(BIN)/lint-imports

# CKPT=path/to/best.ckpt names the checkpoint; without it serve takes the newest run under outputs/ whose checkpoint
# has an out-of-domain detector (vit_mnist/inference/choose.py), and says which
serve:  ## the digit-drawing web app on http://127.0.0.1:8000 (CKPT=path to choose the checkpoint, ARGS="port=8080")
	$(BIN)/python -m vit_mnist.serve $(if $(CKPT),ckpt_path=$(CKPT)) $(ARGS)

DRY_RUN ?= 0
gpu-check:  ## on a CUDA machine: GPU tests, fast's time to 99%, the benchmark, note_budget x3 (BEST=1: best too); non-zero exit if any fails; DRY_RUN=1: every step on the CPU, tiny
	DRY_RUN=$(DRY_RUN) bash scripts/gpu_check.sh

# A lent GPU machine has torch, Lightning and most of the rest, but not hydra-core, omegaconf or the antlr4 runtime
# (published as a source archive only: built into a wheel here), and no internet: bring .whl/ and data/ along.
pin = $(shell grep -i '^$(1)==' constraints.txt | cut -d= -f3)
SHARED_DATA ?= $(or $(VIT_MNIST_DATA_DIR),../shared/data)
gpu-bundle:  ## wheels for `make gpu-check` on a machine without internet (.whl/), and MNIST gzipped into data/
	rm -rf .whl && mkdir -p .whl data/MNIST/raw
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d .whl hydra-core==$(call pin,hydra-core) omegaconf==$(call pin,omegaconf)
	$(BIN)/pip wheel -q --no-deps -w .whl antlr4-python3-runtime==$(call pin,antlr4-python3-runtime)
	for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do \
	  if [ -f $(SHARED_DATA)/MNIST/raw/$$f.gz ]; then cp $(SHARED_DATA)/MNIST/raw/$$f.gz data/MNIST/raw/; \
	  elif [ -f $(SHARED_DATA)/MNIST/raw/$$f ]; then gzip -c $(SHARED_DATA)/MNIST/raw/$$f > data/MNIST/raw/$$f.gz; \
	  else echo "gpu-bundle: $(SHARED_DATA)/MNIST/raw/ lacks $$f (set SHARED_DATA=...)"; exit 1; fi; done
	@ls -l .whl data/MNIST/raw

tensorboard:
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf .pytest_cache **/__pycache__
