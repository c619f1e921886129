"""Print how long a checkpoint's network takes to run 5,000 images with its test-time shifts and features, as the
after-fit step does, in each weight layout and at several evaluation batch sizes (a benchmark, not a test).

    python scripts/inference_layout.py <run>/checkpoints/best.ckpt [repeats]

On a CPU, in bf16 autocast where the CPU has native bf16 (as `fast`'s runs), else fp32; each cell the best of
`repeats` (default 2) after one warm-up pass, since oneDNN prepares its kernels on a shape's first call.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch

from vit_mnist.models.outputs import run_network
from vit_mnist.runtime.hardware import native_bf16
from vit_mnist.training.checkpoints import load_module

BATCH_SIZES = (1000, 250, 100)
LAYOUTS = {"contiguous": False, "channels-last": True}


def main(ckpt: str, repeats: int) -> None:
    module = load_module(ckpt)
    net, tta = module.net, bool(module.hparams.get("tta", False))
    mean, std = float(module.hparams["normalize"]["mean"]), float(module.hparams["normalize"]["std"])
    images = torch.randint(0, 256, (5000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bf16 = native_bf16()
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    print(f"{ckpt}: 5,000 images, test-time shifts {'on' if tta else 'off'}, {'bf16' if bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads\n")
    print("| layout | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |\n|---|" + "---:|" * len(BATCH_SIZES))
    for name, layout in LAYOUTS.items():
        cells = []
        for batch in BATCH_SIZES:
            best = float("inf")
            for attempt in range(repeats + 1):
                started = time.perf_counter()
                run_network(net, images, mean, std, tta=tta, features=True, batch_size=batch, context=context,
                            channels_last=layout)
                if attempt:  # the first is the warm-up
                    best = min(best, time.perf_counter() - started)
            cells.append(f"{best:.2f} s")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
