"""Print a checkpoint's verdict shares under other detector acceptances and a flat-softmax gate (a benchmark, not a
test): the digits marked out_of_domain (clean, the corruptions' mean, other writers), the non-digits answered
confident or out_of_domain, and the share of the threshold check images answered confident. (The calibration error
at other temperatures: scripts/shifted_calibration.py.)

    python scripts/verdict_rules.py <run>/checkpoints/best.ckpt [data_dir]

The checkpoint's stored detector gives the score, its statistics and the temperature; each rule re-fixes the
thresholds on the same validation digits the training run used (the first 5,000; the unsure threshold on them drawn
as other writers' when the detector was fitted with verdict_unsure_on=writer_shift).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
from omegaconf import OmegaConf

from vit_mnist.data import load_split
from vit_mnist.data.corruptions import corrupt
from vit_mnist.data.non_digits import load_non_digit_sets
from vit_mnist.data.other_writers import load_other_writers
from vit_mnist.data.writer_shift import writer_shifted
from vit_mnist.evaluation.checkpoint_data import checkpoint_datamodule
from vit_mnist.models.outputs import run_network
from vit_mnist.ood.detector import THRESHOLD_IMAGES, UNSURE_ON
from vit_mnist.ood.thresholds import (
    ACCEPTANCE_LEVELS,
    acceptance_threshold,
    confidence_threshold,
)
from vit_mnist.robustness_suite.suite import build_suite
from vit_mnist.training.after_fit import CHECK_IMAGES
from vit_mnist.training.checkpoints import load_module, read_checkpoint, trained_dataset

# (acceptance, flat gate): the detector's levels, one looser level, and the flat-softmax gate
RULES = [(level, 0.0) for level in (*ACCEPTANCE_LEVELS, 0.999)] + [(0.998, 0.12), (0.998, 0.15), (0.999, 0.12)]


def main(ckpt_path: str, data_dir: str) -> None:
    ckpt = read_checkpoint(ckpt_path)
    module, dataset = load_module(ckpt_path), trained_dataset(ckpt)
    detector, temperature = module.ood_detector, float(module.temperature)
    mean, std = float(module.hparams["normalize"]["mean"]), float(module.hparams["normalize"]["std"])

    def outputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = run_network(module.net, images, mean, std, tta=bool(module.hparams.get("tta")),
                                    features=detector.needs_features, batch_size=100)
        return (logits.double() / temperature).softmax(dim=-1), detector.scores(logits.double(), feats)

    datamodule = checkpoint_datamodule(ckpt, dataset, {"data_dir": data_dir, "download": False})
    datamodule.setup("fit")
    val = datamodule.val_set
    test, test_labels = load_split(dataset, data_dir, "test", download=False)
    test, test_labels = test[:2000], test_labels[:2000]
    digits = {"clean": (test, test_labels), "other writers": load_other_writers()}
    suite = build_suite(OmegaConf.load("conf/corruptions/default.yaml"))
    corrupted = {c.name: (corrupt(test, c.kind, c.level, 0, c.name), test_labels) for c in suite}
    non_digits = load_non_digit_sets(dataset, data_dir)[0]
    check = torch.cat(list(load_non_digit_sets(dataset, data_dir, CHECK_IMAGES,
                                               split="thresholds")[0].values()))
    seen = {name: (outputs(images), labels) for name, (images, labels) in {
        "val": (val.images[:THRESHOLD_IMAGES], val.labels[:THRESHOLD_IMAGES]), **digits, **corrupted}.items()}
    seen.update({name: (outputs(images), None) for name, images in {**non_digits, "check": check}.items()})

    (val_probs, val_scores), val_labels = seen["val"]
    if detector.info.get("unsure_fixed_on", UNSURE_ON["clean"]) != UNSURE_ON["clean"]:  # shifted, as the run fixed it
        strength = float(detector.info.get("shift_strength", 1.0))
        val_probs = outputs(writer_shifted(val.images[:THRESHOLD_IMAGES], strength=strength))[0]
    top1, preds = val_probs.max(dim=-1)
    unsure = confidence_threshold(top1, preds == val_labels)
    columns = ["clean", "corrupted", "other writers", "other writers right when confident", "check confident",
               *[f"{n} confident / out_of_domain" for n in non_digits]]
    print(f"temperature {temperature:.4f}, unsure below {unsure:.4f}\n")
    print("| acceptance | flat gate | " + " | ".join(columns) + " |\n|---:|---:|" + "---:|" * len(columns))
    for acceptance, gate in RULES:
        rule = dataclasses.replace(detector, ood_threshold=acceptance_threshold(val_scores, acceptance),
                                   unsure_threshold=unsure, flat_threshold=gate)

        def verdicts(name: str) -> torch.Tensor:
            return rule.verdict_codes(*seen[name][0])  # the detector's own rule, at these thresholds

        def share(name: str, code: int) -> float:
            return 100 * float((verdicts(name) == code).double().mean())

        sure = verdicts("other writers") == 0
        right = seen["other writers"][0][0].argmax(dim=-1)[sure] == seen["other writers"][1][sure]
        cells = [share("clean", 2), sum(share(c, 2) for c in corrupted) / len(corrupted), share("other writers", 2),
                 100 * float(right.double().mean()), share("check", 0)]
        cells = [f"{c:.2f}%" for c in cells] + [f"{share(n, 0):.1f}% / {share(n, 2):.1f}%" for n in non_digits]
        print(f"| {100 * acceptance:.1f}% | {gate:g} | " + " | ".join(cells) + " |")

    # in hindsight, on the other writers' own answers: the lowest confidence at which 99.5% of them are right
    other, other_labels = seen["other writers"][0][0].max(dim=-1), seen["other writers"][1]
    needed = confidence_threshold(other.values, other.indices == other_labels, 0.995)
    print(f"\nOther writers' answers are right 99.5% of the time from a top-1 of {needed:.4f} up: "
          f"{100 * float((other.values >= needed).double().mean()):.1f}% of them (the stored rule: {unsure:.4f}).")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VIT_MNIST_DATA_DIR", "data"))
