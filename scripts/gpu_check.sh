#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, the GPU tests, experiment=fast's time to 99%, the benchmark and
# note_budget over 3 seeds (then best, if BEST=1), about 10 minutes on one current GPU; figures in
# $GPU_CHECK_DIR/gpu_check.md, a summary of every step at the end.
#
# It exits non-zero, naming what failed, when a step fails, when an NVIDIA GPU is present (nvidia-smi) but torch
# cannot use it, or when a Python package or the MNIST files are missing. Without any GPU it says so in one line and
# exits 0.
#   DRY_RUN=1        every step on the CPU with tiny limits (the same commands, trainer.accelerator=cpu, a few
#                    batches): the script's plumbing, checked by the test suite and by anyone without a GPU
#   ONLY="fast bench" run only these steps (of: tests fast bench note_budget best)
#   EXTRA_ARGS="..."  Hydra overrides added to every training step, e.g. "trainer.devices=1"
#   WHEELS=.whl      wheels installed first into a temporary folder when hydra-core or omegaconf is missing
#                    (a bare GPU machine without internet: `make gpu-bundle` gathers them and the data beforehand)
#   VIT_MNIST_DATA_DIR  the data folder (default: data/ in the checkout)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
DRY_RUN=${DRY_RUN:-0}
WHEELS=${WHEELS:-.whl}
DATA_DIR=${VIT_MNIST_DATA_DIR:-$PWD/data}
ONLY=${ONLY:-tests fast bench note_budget best}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

stop() {  # what, why: the check cannot run at all
  echo "gpu-check: FAILED ($1): $2"
  exit 1
}

# --- the machine ------------------------------------------------------------------------------------------------
has_cuda() { "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
torch_build() { "$PYTHON" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda)' 2>/dev/null || echo "torch not importable"; }
if [ "$DRY_RUN" = 1 ]; then
  DEVICE="cpu (DRY_RUN=1)"
elif has_cuda; then
  DEVICE=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
  stop "torch" "an NVIDIA GPU is here ($(nvidia-smi -L | head -n 1)) but $(torch_build) cannot use it. Install \
torch's CUDA build (\`.venv/bin/pip uninstall -y torch\`, then \`make install\`: PyPI's Linux wheels are CUDA builds), \
or check that the driver supports that CUDA version."
else
  echo "gpu-check: no CUDA GPU here ($(torch_build)): nothing to check (DRY_RUN=1 runs every step on the CPU)"
  exit 0
fi

# --- what the steps need: packages (from $WHEELS where missing) and the MNIST files -----------------------------
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl \
    || stop "wheels" "pip could not install the wheels of $WHEELS into $site (two versions of one package?)."
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
missing=$("$PYTHON" - <<'PY'
"""The packages the steps import that this Python lacks."""
import importlib.util
needed = ["hydra", "omegaconf", "yaml", "antlr4", "lightning", "torchmetrics", "matplotlib", "rich", "numpy", "pytest",
          "scipy", "skimage", "PIL"]
print(" ".join(m for m in needed if importlib.util.find_spec(m) is None))
PY
)
[ -z "$missing" ] || stop "packages" "this Python ($PYTHON) lacks: $missing. On a machine without internet, run \
\`make gpu-bundle\` where pip works and bring .whl/ along (WHEELS=path to use another folder)."
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$DATA_DIR/MNIST/raw/$name" ] || [ -f "$DATA_DIR/MNIST/raw/$name.gz" ] || stop "data" "$DATA_DIR/MNIST/raw/ \
lacks $name (raw or .gz), and the steps do not download. Point VIT_MNIST_DATA_DIR at a folder that has MNIST, or \
run \`make gpu-bundle\` (gzipped copies into data/) before bringing the checkout."
done
export VIT_MNIST_DATA_DIR=$DATA_DIR

# --- the steps ----------------------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then  # the same commands, on the CPU, a few batches each
  TRAINER=(trainer.accelerator=cpu trainer.precision=32-true trainer.max_epochs=1 trainer.limit_train_batches=2
           trainer.limit_val_batches=1 trainer.limit_test_batches=1 robustness_images=20 data.val_size=100
           outlier_exposure.count=10)
  BENCH=(device=cpu precision=32-true "batch_sizes=[8]" steps=2 warmup=1 repeats=1 matmul_size=128)
  SEEDS=1
else
  TRAINER=(trainer=gpu)
  BENCH=(device=cuda "batch_sizes=[256,1024]" precision=bf16-mixed)
  SEEDS=1,2,3
fi
mkdir -p "$OUT"
: > "$OUT/steps.txt"
echo "gpu-check: $DEVICE -> $OUT"
failed=()
step() {  # name, command...: run it, keep its output, go on to the next step whatever happens
  local name=$1; shift
  case " $ONLY " in *" $name "*) ;; *) return ;; esac
  local started code
  started=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  code=$?
  echo "$name: exit $code in $(( $(date +%s) - started )) s" | tee -a "$OUT/steps.txt"
  if [ "$code" != 0 ]; then
    failed+=("$name")
    tail -n 5 "$OUT/$name.log" | sed "s/^/  $name| /"
  fi
}
step tests "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
step fast "$PYTHON" -m vit_mnist.train experiment=fast seed=1 "${TRAINER[@]}" callbacks.progress_bar=null \
  data.download=false "${EXTRA[@]}" hydra.run.dir="$OUT/fast"
step bench "$PYTHON" -m vit_mnist.bench peers=false "${BENCH[@]}" output="$OUT/bench.json"
step note_budget "$PYTHON" -m vit_mnist.train -m experiment=note_budget "${TRAINER[@]}" seed=$SEEDS \
  callbacks.progress_bar=null data.download=false "${EXTRA[@]}" hydra.sweep.dir="$OUT/note_budget"
if [ "${BEST:-0}" = 1 ]; then
  step best "$PYTHON" -m vit_mnist.train -m experiment=best "${TRAINER[@]}" seed=1 data=mnist,fashion_mnist \
    callbacks.progress_bar=null data.download=false "${EXTRA[@]}" hydra.sweep.dir="$OUT/best"
fi

"$PYTHON" - "$OUT" "$DEVICE" <<'PY'
"""Collect the runs' metrics.json figures and the steps into gpu_check.md."""
import json, sys
from pathlib import Path
import torch
out, device = Path(sys.argv[1]), sys.argv[2]
lines = [f"# gpu-check on {device} (torch {torch.__version__})", "",
         "| run | test acc | val acc best | training loop (s) | epochs |", "|---|---:|---:|---:|---:|"]
for metrics in sorted(out.glob("**/metrics.json")):
    m = json.loads(metrics.read_text())
    if "test/acc" in m:
        lines.append(f"| {metrics.parent.relative_to(out)} | {m['test/acc']:.4f} | {m['val/acc_best']:.4f} "
                     f"| {m['train_time_s']} | {m['epochs']} |")
lines += ["", "```", (out / "steps.txt").read_text().rstrip(), "```"]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu-check: FAILED (${failed[*]}): see $OUT/<step>.log"
  exit 1
fi
echo "gpu-check: every step passed ($OUT/gpu_check.md)"
