"""Train as `python -m vit_mnist.train` does, with Muon on the transformer blocks' weight matrices (a probe, not a test).

    python scripts/muon_probe.py experiment=fast seed=1 trainer.max_epochs=1 after_fit=search
    MUON_LR=0.02 MUON_ADJUST=original python scripts/muon_probe.py experiment=fast seed=1 trainer.max_epochs=1

The run's optimizer (AdamW for `fast`) keeps every parameter but the blocks' 2-D weights (attention qkv and
projection, the feed-forward's two layers), which `torch.optim.Muon` takes (Jordan et al. 2024: orthogonalised
momentum for hidden matrices; the convolutions, norms, embeddings and head stay with AdamW, as Muon's authors
advise). One warmup + cosine schedule drives both. MUON_LR: Muon's learning rate (default: the run's);
MUON_ADJUST: `match_rms_adamw` (default; Moonshot's scaling, which reuses AdamW's learning rate) or `original`.
Measured and not kept: docs/results.md#session-23-muon-for-one-epoch-measured-dropped.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from vit_mnist.training import module as training_module


class BothOptimizers(torch.optim.Optimizer):
    """Two optimizers stepped as one, for Lightning's automatic optimization (one optimizer) and one LR schedule."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        # the two optimizers' own group dicts (Optimizer keeps the dicts it is given): the schedule's lr reaches both
        super().__init__([group for o in optimizers for group in o.param_groups], {})

    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)


run_optimizers = training_module.ViTClassifier.configure_optimizers


def with_muon(self: training_module.ViTClassifier) -> Any:
    """The run's optimizer and schedule, with the blocks' matrices moved to Muon."""
    configured = run_optimizers(self)
    scheduled = isinstance(configured, dict)
    rest = configured["optimizer"] if scheduled else configured
    matrices = [p for name, p in self.net.named_parameters() if name.startswith("blocks.") and p.ndim == 2]
    moved = {id(p) for p in matrices}
    for group in rest.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in moved]
    lr = float(os.environ.get("MUON_LR") or self.hparams.optimizer["lr"])
    muon = torch.optim.Muon(matrices, lr=lr, weight_decay=float(self.hparams.optimizer.get("weight_decay", 0.0)),
                            adjust_lr_fn=os.environ.get("MUON_ADJUST", "match_rms_adamw"))
    print(f"muon_probe: Muon on {sum(p.numel() for p in matrices):,} parameters, lr {lr}", file=sys.stderr)
    both = BothOptimizers([muon, rest])
    if not scheduled:
        return both
    schedule = torch.optim.lr_scheduler.LambdaLR(both, configured["lr_scheduler"]["scheduler"].lr_lambdas[0])
    return {"optimizer": both, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


training_module.ViTClassifier.configure_optimizers = with_muon

from vit_mnist.train import main  # noqa: E402  (after the patch, as the job imports the module)

if __name__ == "__main__":
    main()
