# Common tasks. `make install` is the only set-up step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install train test test-fast lint clean tensorboard serve

install:  ## .venv, pinned torch first (keeps pip from pulling another build), then the project
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -e ".[dev]"

train:  ## the default ViT on MNIST; pass Hydra overrides with ARGS="model.depth=6 trainer.max_epochs=20"
	$(BIN)/python -m vit_mnist.train $(ARGS)

test:  ## the whole suite; slow tests run when the real data is found
	$(BIN)/python -m pytest -q

test-fast:  ## without the slow tests
	$(BIN)/python -m pytest -q -m "not slow"

# unless CKPT=path/to.ckpt is given: the newest run whose robustness was measured (robustness=true, e.g.
# experiment=robust), else the newest best checkpoint under outputs/
ROBUST_CKPT := $(shell for f in $$(ls -t outputs/*/*/robustness.json 2>/dev/null); do c=$${f%robustness.json}checkpoints/best.ckpt; [ -f "$$c" ] && echo "$$c" && break; done)
CKPT ?= $(or $(ROBUST_CKPT),$(shell ls -t outputs/*/*/checkpoints/best.ckpt outputs/*/checkpoints/best.ckpt 2>/dev/null | head -n 1))

serve:  ## the digit-drawing web app on http://127.0.0.1:8000 (CKPT=path to choose the checkpoint, ARGS="port=8080")
	$(BIN)/python -m vit_mnist.serve ckpt_path=$(CKPT) $(ARGS)

tensorboard:
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf .pytest_cache **/__pycache__
