#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, the GPU tests, experiment=fast's time to 99%, the benchmark and
# note_budget over 3 seeds (then best, if BEST=1), about 10 minutes on one current GPU; figures in
# $GPU_CHECK_DIR/gpu_check.md. Without CUDA it says so in one line and exits 0.
# A bare GPU machine without hydra-core/omegaconf: put their wheels (and pytest's) in $WHEELS (default .whl/);
# they are installed into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu-check: no CUDA GPU here ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda)' 2>/dev/null || echo 'torch not importable')): nothing to check"
  exit 0
fi
WHEELS=${WHEELS:-.whl}
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
echo "gpu-check: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))') -> $OUT"

step() {  # name, command...: run it, keep its output, never stop the check
  local name=$1; shift
  local started=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - started )) s" | tee -a "$OUT/steps.txt"
}
step tests "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
step fast "$PYTHON" -m vit_mnist.train experiment=fast trainer=gpu seed=1 callbacks.progress_bar=null hydra.run.dir="$OUT/fast"
step bench "$PYTHON" -m vit_mnist.bench device=cuda peers=false "batch_sizes=[256,1024]" precision=bf16-mixed output="$OUT/bench.json"
step note_budget "$PYTHON" -m vit_mnist.train -m experiment=note_budget trainer=gpu seed=1,2,3 callbacks.progress_bar=null hydra.sweep.dir="$OUT/note_budget"
if [ "${BEST:-0}" = 1 ]; then
  step best "$PYTHON" -m vit_mnist.train -m experiment=best trainer=gpu seed=1 data=mnist,fashion_mnist callbacks.progress_bar=null hydra.sweep.dir="$OUT/best"
fi
"$PYTHON" - "$OUT" <<'PY'
"""Collect the runs' metrics.json figures into gpu_check.md."""
import json, sys
from pathlib import Path
import torch
out = Path(sys.argv[1])
lines = [f"# gpu-check on {torch.cuda.get_device_name(0)} (torch {torch.__version__})", "",
         "| run | test acc | val acc best | training loop (s) | epochs |", "|---|---:|---:|---:|---:|"]
for metrics in sorted(out.glob("**/metrics.json")):
    m = json.loads(metrics.read_text())
    if "test/acc" in m:
        lines.append(f"| {metrics.parent.relative_to(out)} | {m['test/acc']:.4f} | {m['val/acc_best']:.4f} "
                     f"| {m['train_time_s']} | {m['epochs']} |")
lines += ["", (out / "steps.txt").read_text() if (out / "steps.txt").exists() else ""]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
