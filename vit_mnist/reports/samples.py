"""What the test stage keeps per image for the reports, batch by batch, and gathers across processes at the end."""

from __future__ import annotations

from typing import Any

import torch

TOP_WRONG = 32  # images in misclassified.png
NUM_EXAMPLES = 10  # images in attention.png, one per class
CALIBRATION_BINS = 15  # torchmetrics' default for the expected calibration error


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    parts = [p for p in parts if p is not None]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else None


def _gather(obj: Any) -> list[Any]:
    """`obj` from every process of a distributed run (just `[obj]` otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)  # pickled: the parts differ in size between ranks
    return gathered


def _most_confident(parts: list[dict[str, torch.Tensor] | None], k: int) -> dict[str, torch.Tensor] | None:
    """The `k` entries with the highest "confidence" across `parts`."""
    merged = _cat(parts)
    if merged is None:
        return None
    order = merged["confidence"].argsort(descending=True, stable=True)[:k]
    return {key: v[order] for key, v in merged.items()}


class ReportSamples:
    """Per-image test outputs the reports need, collected batch by batch on the CPU: every probability vector,
    the most confidently wrong images, and one example image per class with its attention rollout map."""

    def __init__(self, top_wrong: int = TOP_WRONG, num_examples: int = NUM_EXAMPLES):
        self.top_wrong, self.num_examples = top_wrong, num_examples
        self.reset()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._raw_probs: list[torch.Tensor] = []  # before calibration, when given
        self._targets: list[torch.Tensor] = []
        self._wrong: dict[str, torch.Tensor] | None = None
        self._examples: dict[str, torch.Tensor] | None = None

    def update(self, images: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
               raw_probs: torch.Tensor | None = None) -> None:
        """Add one batch: images as pixels in [0, 1] (B, C, H, W), class probabilities (B, K), labels (B,), and
        optionally the probabilities before calibration (B, K)."""
        probs, targets = probs.detach().float().cpu(), targets.detach().cpu()
        self._probs.append(probs)
        if raw_probs is not None:
            self._raw_probs.append(raw_probs.detach().float().cpu())
        self._targets.append(targets)
        confidence, preds = probs.max(dim=1)
        wrong = preds != targets
        if wrong.any():
            batch = {"images": images[wrong.to(images.device)].detach().float().cpu(), "targets": targets[wrong],
                     "preds": preds[wrong], "confidence": confidence[wrong]}
            self._wrong = _most_confident([self._wrong, batch], self.top_wrong)

    def missing_examples(self, targets: torch.Tensor) -> torch.Tensor:
        """Indices into this batch of the first image of each class that has no example yet."""
        have = set() if self._examples is None else set(self._examples["targets"].tolist())
        picked: list[int] = []
        if len(have) < self.num_examples:
            for i, t in enumerate(targets.tolist()):
                if t not in have:
                    have.add(t)
                    picked.append(i)
                    if len(have) == self.num_examples:
                        break
        return torch.tensor(picked, dtype=torch.long, device=targets.device)

    def add_examples(self, images: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, maps: torch.Tensor) -> None:
        """Add example images (pixels in [0, 1]) with their labels, predictions and attention maps."""
        batch = {"images": images.detach().float().cpu(), "targets": targets.detach().cpu(),
                 "preds": preds.detach().cpu(), "maps": maps.detach().float().cpu()}
        self._examples = _cat([self._examples, batch])

    def compute(self) -> dict[str, torch.Tensor]:
        """Everything collected, from all processes: probs (raw_probs when given), targets, wrong_* and example_*."""
        states = _gather((self._probs, self._targets, self._wrong, self._examples, self._raw_probs))
        # With DDP the sampler pads the last batch by repeating images: the same few are counted twice, as in
        # torchmetrics' own synced metrics, so the report and the logged metrics still agree.
        all_probs, all_targets = [p for s in states for p in s[0]], [t for s in states for t in s[1]]
        out = {"probs": torch.cat(all_probs) if all_probs else torch.empty(0, 0),
               "targets": torch.cat(all_targets).long() if all_targets else torch.empty(0, dtype=torch.long)}
        all_raw = [p for s in states for p in s[4]]
        if all_raw and len(torch.cat(all_raw)) == len(out["probs"]):
            out["raw_probs"] = torch.cat(all_raw)
        wrong = _most_confident([s[2] for s in states], self.top_wrong)
        if wrong is not None:
            out.update({f"wrong_{k}": v for k, v in wrong.items()})
        examples = _cat([s[3] for s in states])
        if examples is not None:  # one per class, in class order
            first: dict[int, int] = {}
            for i, t in enumerate(examples["targets"].tolist()):
                first.setdefault(t, i)
            keep = [first[t] for t in sorted(first)][: self.num_examples]
            out.update({f"example_{k}": v[keep] for k, v in examples.items()})
        return out
