"""Out-of-domain scores, thresholds and verdicts on constructed numbers; the benchmark's section in the reports."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from vit_mnist.errors import UserError
from vit_mnist.models.cnn import CNNConfig, SmallCNN
from vit_mnist.models.outputs import logits_and_features
from vit_mnist.models.tta import tta_logits
from vit_mnist.models.vit import VisionTransformer, ViTConfig
from vit_mnist.ood.detector import (
    STATS_ON,
    UNSURE_ON,
    ConfidenceDigits,
    FitData,
    OODDetector,
    VerdictRule,
    check_flat_gate,
    check_max_acceptance,
    check_shift_strength,
    check_stats_on,
    check_unsure_on,
    check_verdict_options,
    fit_detectors,
    split_fit_data,
)
from vit_mnist.ood.scores import (
    SCORES,
    Energy,
    Mahalanobis,
    MaxSoftmax,
    NearestNeighbours,
    RelativeMahalanobis,
    fit_class_gaussians,
    mahalanobis_score,
)
from vit_mnist.ood.thresholds import (
    acceptance_levels,
    acceptance_threshold,
    confidence_threshold,
    loosest_acceptance,
)
from vit_mnist.robustness_suite.ood_benchmark import OODMeter, auroc, detector_for

EVAL = ["data.eval_batch_size=100", "data.download=false"]


def test_msp_and_energy_score_a_flat_answer_above_a_sure_one() -> None:
    logits = torch.tensor([[12.0, 0.0, 0.0], [1.0, 1.0, 1.0], [3.0, 2.9, 0.0]])
    msp = MaxSoftmax()(logits)
    assert msp[1] == pytest.approx(math.log(3)) and msp[0] < 1e-4 < msp[2] < msp[1]
    assert torch.isfinite(MaxSoftmax()(torch.tensor([[300.0, 0.0]]))).all()  # no overflow ...
    # ... and no saturation: two very sure answers keep their order, where 1 - max softmax is 0.0 for both
    assert MaxSoftmax()(torch.tensor([[40.0, 0.0]]))[0] > MaxSoftmax()(torch.tensor([[50.0, 0.0]]))[0]
    energy = Energy()(logits)
    assert energy[0] < energy[2] and energy[0] < energy[1]
    assert energy[1] == pytest.approx(-(1 + math.log(3)))
    # a temperature flattens the softmax: the sure answer's msp score rises
    assert MaxSoftmax()(logits[:1], temperature=4.0)[0] > msp[0]


def test_relative_mahalanobis_is_the_class_distance_less_the_distance_to_all_digits() -> None:
    g = torch.Generator().manual_seed(1)
    means = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = torch.arange(3).repeat(1000)
    features = means[labels] + torch.randn(len(labels), 3, generator=g) * torch.tensor([0.5, 0.5, 2.0])
    relative = RelativeMahalanobis()
    relative.fit(features, labels, 3)
    probes = torch.tensor([[0.5, 0.0, 1.0], [2.0, 2.0, -6.0], [9.0, 9.0, 0.0]])
    class_means, precision = fit_class_gaussians(features, labels, 3)
    background_mean, background_precision = fit_class_gaussians(features, torch.zeros_like(labels), 1)
    by_hand = (mahalanobis_score(probes, class_means, precision)
               - mahalanobis_score(probes, background_mean, background_precision))
    assert torch.allclose(relative(None, probes), by_hand)
    assert relative(None, probes[:1])[0] < 0 < relative(None, probes[2:])[0]  # a digit-like point: below zero
    outliers = torch.randn(300, 3, generator=g) * 3 + torch.tensor([8.0, 8.0, 0.0])
    assert auroc(relative(None, features[:300]), relative(None, outliers)) > 0.99
    back = RelativeMahalanobis.from_state(relative.state_dict())
    assert torch.allclose(back(None, probes), relative(None, probes), rtol=1e-4)
    with pytest.raises(ValueError, match="background"):
        RelativeMahalanobis.from_state({**relative.state_dict(), "background_mean": torch.zeros(1, 2)})


def test_knn_is_the_distance_to_the_k_th_nearest_normalised_training_feature() -> None:
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(200, 4, generator=g)
    knn = NearestNeighbours()
    knn.fit(bank * 7.0, torch.zeros(200, dtype=torch.long), 1)  # normalised: the scale of features does not matter
    probes = torch.randn(6, 4, generator=g)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    by_hand = torch.cdist(unit(probes), unit(bank)).sort(dim=1).values[:, NearestNeighbours.K - 1]
    assert torch.allclose(knn(None, probes).float(), by_hand, atol=1e-5)
    digits = torch.tensor([1.0, 0.0, 0.0, 0.0]) * 4 + torch.randn(300, 4, generator=g)  # features around one way
    knn.fit(digits, torch.zeros(300, dtype=torch.long), 1)
    inside = torch.tensor([1.0, 0.0, 0.0, 0.0]) * 4 + torch.randn(50, 4, generator=g)
    assert auroc(knn(None, inside), knn(None, -inside)) > 0.99  # the opposite way: far from every training image
    assert torch.equal(NearestNeighbours.from_state(knn.state_dict()).bank, knn.bank)
    with pytest.raises(ValueError, match="bank"):
        NearestNeighbours.from_state({"bank": torch.zeros(3)})


def test_mahalanobis_weighs_each_direction_by_the_data_spread() -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    scale = torch.tensor([3.0, 1.0, 0.2])  # the features spread widely along x, hardly along z
    labels = torch.arange(3).repeat(2000)
    features = means[labels] + torch.randn(len(labels), 3, generator=g) * scale
    fitted_means, precision = fit_class_gaussians(features, labels, 3)
    assert torch.allclose(fitted_means.float(), means, atol=0.1)
    assert torch.allclose(precision.diagonal().float(), 1 / scale**2, rtol=0.1)
    # the same Euclidean step from class 0's mean: along x it is ordinary, along z it is far out
    probes = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    d = mahalanobis_score(probes, fitted_means, precision)
    assert d[0] == pytest.approx(1 / 9, rel=0.2) and d[1] == pytest.approx(25.0, rel=0.2)
    # a cluster off the classes is told from them
    inside = means[labels[:300]] + torch.randn(300, 3, generator=g) * scale
    outside = torch.tensor([3.0, 3.0, 2.0]) + torch.randn(300, 3, generator=g) * scale
    assert auroc(mahalanobis_score(inside, fitted_means, precision),
                 mahalanobis_score(outside, fitted_means, precision)) > 0.99
    with pytest.raises(UserError, match="no example of class"):
        fit_class_gaussians(features[labels < 2], labels[labels < 2], 3)


def test_auroc_counts_pairs_and_ties_and_keeps_large_scores_apart() -> None:
    inside, outside = torch.tensor([1.0, 2.0, 3.0, 3.0]), torch.tensor([3.0, 4.0, 0.5])
    pairs = sum((o > i) + 0.5 * (o == i) for o in outside.tolist() for i in inside.tolist())
    assert auroc(inside, outside) == pytest.approx(pairs / (len(inside) * len(outside)))
    # scores in the hundreds (Mahalanobis distances) would all be 1.0 after BinaryAUROC's sigmoid
    assert auroc(torch.tensor([100.0, 200.0]), torch.tensor([300.0, 400.0])) == 1.0


def test_the_acceptance_threshold_accepts_99_percent_of_the_scores() -> None:
    scores = torch.randperm(1000).double()  # 0 .. 999
    t = acceptance_threshold(scores, 0.99)
    assert t == 989.0 and float((scores <= t).double().mean()) == 0.99
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(777, generator=g)
    t = acceptance_threshold(scores)
    accepted = float((scores <= t).double().mean())
    assert 0.99 <= accepted < 0.99 + 1 / 777  # at least 99%, and no threshold lower would do
    assert acceptance_threshold(torch.tensor([5.0]), 0.99) == 5.0


def test_the_acceptance_loosens_only_while_no_more_non_digits_become_confident() -> None:
    digits = torch.randperm(1000).double()  # thresholds: 989 at 99%, 994 at 99.5%, 997 at 99.8% accepted
    far = torch.full((100,), 5000.0)
    unsure = torch.zeros(100, dtype=torch.bool)
    assert loosest_acceptance(digits, torch.zeros(100), unsure) == (0.998, 0.0)  # the softmax holds every one back
    sure = torch.ones(100, dtype=torch.bool)
    assert loosest_acceptance(digits, far, sure) == (0.998, 0.0)  # the score rejects them all at every level
    some = far.clone()
    some[:1], some[1:4] = 992.0, 996.0  # 1 point more let through at 99.5%, 4 at 99.8%
    assert loosest_acceptance(digits, some, sure) == (0.995, pytest.approx(0.01))
    assert loosest_acceptance(digits, some, sure, rise=0.05) == (0.998, pytest.approx(0.04))
    some[:2] = 992.0  # 2 points more at 99.5% already: the floor
    assert loosest_acceptance(digits, some, sure) == (0.99, 0.0)
    leaky = far.clone()
    leaky[:5] = 500.0  # 5% confident at every level: the score's tail catches none of them, loosening costs nothing
    assert loosest_acceptance(digits, leaky, sure) == (0.998, pytest.approx(0.05))


def test_the_confidence_threshold_keeps_the_confident_answers_right() -> None:
    # 1,000 answers: the 20 wrong ones have probabilities 0.60-0.79, the right ones 0.50-0.999
    top1 = torch.cat([torch.linspace(0.50, 0.999, 980), torch.linspace(0.60, 0.79, 20)])
    correct = torch.cat([torch.ones(980), torch.zeros(20)]).bool()
    t = confidence_threshold(top1, correct, precision=0.998)
    kept = top1 >= t
    assert float(correct[kept].double().mean()) >= 0.998
    assert 0.75 < t <= 0.80  # just above most of the wrong ones: every threshold lower lets too many through
    assert confidence_threshold(top1, correct, precision=0.9) == 0.5  # the floor: below it nothing is confident
    assert confidence_threshold(torch.tensor([0.9, 0.8]), torch.tensor([False, True]), 0.99) == math.inf


def answers_at(top1: torch.Tensor, labels: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Logits (N, 10) whose softmax gives each row's answer the probability `top1`: `labels`, or the next class
    where `wrong`."""
    answer = torch.where(wrong, (labels + 1) % 10, labels)
    logits = torch.zeros(len(labels), 10, dtype=torch.float64)
    logits[torch.arange(len(labels)), answer] = torch.log(top1.double() * 9 / (1 - top1.double()))
    return logits


def test_the_unsure_threshold_can_be_fixed_on_shifted_digits() -> None:
    labels = torch.arange(1000) % 10
    images = torch.zeros(1000, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels
    digits = FitData(images, labels)

    top1 = torch.linspace(0.5, 0.999, 1000)

    def outputs(images: torch.Tensor) -> tuple[torch.Tensor, None]:  # every digit as it is right, however sure
        return answers_at(top1, images[:, 0, 0, 0].long(), torch.zeros(len(images), dtype=torch.bool)), None

    # the same digits shifted: the same probabilities, every answer under 0.9 wrong
    shifted = answers_at(top1, labels, top1 < 0.9)
    clean = fit_detectors(outputs, digits, digits, 10, ("msp",))["msp"]
    moved = fit_detectors(outputs, digits, digits, 10, ("msp",),
                          confidence_on=ConfidenceDigits(shifted, labels, "shifted"))["msp"]
    assert clean.unsure_threshold == 0.5 and clean.info["unsure_fixed_on"] == "validation digits"
    assert moved.info["unsure_fixed_on"] == "shifted"
    assert moved.unsure_threshold == pytest.approx(float(top1[top1 >= 0.9][0]), rel=1e-6)
    # only the confidence moves: the out-of-domain threshold is fixed on the digits as they are
    assert moved.ood_threshold == clean.ood_threshold


def test_unsure_on_takes_its_names_and_refuses_others() -> None:
    assert check_unsure_on(None) == "clean" and check_unsure_on("writer_shift") == "writer_shift"
    assert set(UNSURE_ON) == {"clean", "writer_shift"}
    with pytest.raises(UserError, match=r"verdict_unsure_on='writers' is not one of \['clean', 'writer_shift'\]"):
        check_unsure_on("writers")


def test_the_verdict_keys_make_one_rule_and_refuse_bad_names() -> None:
    rule = check_verdict_options({"verdict_stats_on": "writer_shift", "verdict_flat_gate": 0.12})
    assert rule == VerdictRule(score="mahalanobis", unsure_on="clean", stats_on="writer_shift", flat_gate=0.12)
    assert check_verdict_options({}) == VerdictRule()
    assert rule.config_keys()["verdict_flat_gate"] == 0.12 and rule.config_keys()["ood_score"] == "mahalanobis"
    assert check_verdict_options(rule.config_keys()) == rule  # what a checkpoint records reads back as the same rule
    assert set(STATS_ON) == set(UNSURE_ON)
    with pytest.raises(UserError, match=r"verdict_stats_on='augmented' is not one of \['clean', 'writer_shift'\]"):
        check_stats_on("augmented")


def test_the_loosest_acceptance_stops_at_the_rules_cap() -> None:
    digits = torch.arange(1000, dtype=torch.float64)  # digit scores 0..999
    far, sure = torch.full((100,), 5000.0), torch.ones(100, dtype=torch.bool)  # rejected at every level
    assert loosest_acceptance(digits, far, sure) == (0.998, 0.0)  # the default cap
    assert loosest_acceptance(digits, far, sure, acceptance_levels(0.999)) == (0.999, 0.0)
    assert loosest_acceptance(digits, far, sure, acceptance_levels(0.99)) == (0.99, 0.0)
    # a check image that only the loosest threshold accepts, sure: more than the allowed rise is let through
    edge = torch.cat([torch.full((2,), 998.0), torch.full((98,), 5000.0)])
    assert loosest_acceptance(digits, edge, sure, acceptance_levels(0.999), rise=0.01) == (0.998, 0.0)
    assert check_max_acceptance(None) == 0.998 and check_max_acceptance("0.999") == 0.999
    assert check_verdict_options({"verdict_max_acceptance": 0.995}).max_acceptance == 0.995
    for bad in (0.98, 1.0, "all"):
        with pytest.raises(UserError, match=r"verdict_max_acceptance=.* is not one of \[0.99, 0.995, 0.998, 0.999\]"):
            check_max_acceptance(bad)


def test_the_shift_strength_is_recorded_and_refused_outside_zero_to_one() -> None:
    rule = check_verdict_options({"verdict_unsure_on": "writer_shift", "verdict_shift_strength": "0.25"})
    assert rule.shift_strength == 0.25 and check_verdict_options({}).shift_strength == 1.0
    # the stored descriptions say how strong the shift was; the full shift reads as before
    assert rule.shifted(UNSURE_ON["writer_shift"]).endswith("(writer shift at strength 0.25)")
    assert VerdictRule().shifted(UNSURE_ON["writer_shift"]) == UNSURE_ON["writer_shift"]
    assert rule.shifted(UNSURE_ON["clean"]) == UNSURE_ON["clean"]
    for bad in (0, 1.5, -0.2, "mild", math.nan):
        with pytest.raises(UserError, match=r"verdict_shift_strength=.* is not in \(0, 1\]: it scales"):
            check_shift_strength(bad)


def detector(**kwargs) -> OODDetector:
    return OODDetector(Energy(), ood_threshold=kwargs.get("ood", -5.0), unsure_threshold=kwargs.get("unsure", 0.9))


def test_verdicts_follow_the_thresholds() -> None:
    probs = torch.tensor([[0.97, 0.03], [0.6, 0.4], [0.99, 0.01], [0.55, 0.45], [0.9, 0.1]], dtype=torch.float64)
    scores = torch.tensor([-9.0, -9.0, -2.0, -1.0, -5.0])  # above -5: out of domain, however sure
    assert detector().verdicts(probs, scores) == ["confident", "unsure", "out_of_domain", "out_of_domain",
                                                  "confident"]  # exactly at a threshold: in domain, and confident
    assert detector(unsure=math.inf).verdicts(probs[:1], scores[:1]) == ["unsure"]


def test_the_flat_gate_rejects_answers_barely_surer_than_chance() -> None:
    flat = torch.full((1, 10), 0.1, dtype=torch.float64)
    probs = torch.cat([flat, torch.eye(10, dtype=torch.float64)[:1] * 0.98 + 0.002, flat + torch.eye(10)[:1] * 0.01])
    scores = torch.full((3,), -9.0)  # every score in domain: only the softmax can tell
    assert detector().verdicts(probs, scores) == ["unsure", "confident", "unsure"]
    gated = detector()
    gated.flat_threshold = 0.105
    assert gated.verdicts(probs, scores) == ["out_of_domain", "confident", "unsure"]  # top-1 0.1 under, 0.109 over
    assert "or below a calibrated top-1 probability of 0.105" in gated.describe_thresholds()
    assert "below a calibrated top-1 probability of 0.105" not in detector().describe_thresholds()
    assert check_flat_gate(None) == 0.0 and check_flat_gate("0.12") == 0.12
    for bad in (0.5, -0.1, "high"):
        with pytest.raises(UserError, match=r"verdict_flat_gate=.* is not a probability in \[0, 0.5\)"):
            check_flat_gate(bad)


def test_the_detector_goes_into_a_checkpoint_and_back(tmp_path: Path) -> None:
    means, precision = torch.randn(10, 4), torch.eye(4) * 2
    original = OODDetector(Mahalanobis(means, precision), 123.5, 0.75, 0.8, {"threshold_images": 50}, 0.12)
    path = tmp_path / "d.pt"
    torch.save({"ood_detector": original.state_dict()}, path)
    state = torch.load(path, weights_only=True)["ood_detector"]  # plain data: loads without running code
    back = OODDetector.from_state(state)
    assert (back.name, back.ood_threshold, back.unsure_threshold, back.temperature) == ("mahalanobis", 123.5, 0.75,
                                                                                        pytest.approx(0.8))
    assert torch.equal(back.score.class_means, means) and torch.equal(back.score.precision, precision)
    assert back.flat_threshold == pytest.approx(0.12)
    assert OODDetector.from_state({k: v for k, v in state.items() if k != "flat_threshold"}).flat_threshold == 0.0
    features = torch.randn(6, 4)
    assert torch.allclose(back.scores(torch.zeros(6, 10), features), original.scores(torch.zeros(6, 10), features))
    for broken in ({**state, "score": "magic"}, {**state, "precision": torch.eye(3)}, {"score": "energy"},
                   {**state, "temperature": -1.0}, {**state, "flat_threshold": 0.9}):
        with pytest.raises(UserError, match="out-of-domain detector is damaged"):
            OODDetector.from_state(broken)


@pytest.mark.parametrize("net", [
    VisionTransformer(ViTConfig(patch_size=7, hidden_dim=16, depth=1, heads=2, mlp_dim=32)),
    VisionTransformer(ViTConfig(patch_size=7, hidden_dim=16, depth=1, heads=2, mlp_dim=32, distill_token=True,
                                pool="mean")),
    SmallCNN(CNNConfig(widths=(8, 16))),
], ids=["vit", "vit-distilled", "cnn"])
def test_features_come_with_the_very_logits_of_the_network(net: torch.nn.Module) -> None:
    net.eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        logits, features = logits_and_features(net, x)
        assert torch.equal(logits, net(x))  # the same operations: scores match what people are shown
        width = 32 if getattr(net.config, "distill_token", False) else 16  # a distilled ViT: both tokens
        assert features.shape == (5, width)
        tta, tta_features = logits_and_features(net, x, tta=True)
        assert torch.equal(tta, tta_logits(net, x)) and tta_features.shape == (5, width)
        assert logits_and_features(net, x, features=False)[1] is None


def test_fitted_thresholds_accept_99_percent_of_their_digits() -> None:
    g = torch.Generator().manual_seed(1)
    centres, noise = torch.randn(10, 8, generator=g) * 4, torch.randn(3000, 8, generator=g)

    def outputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # stand-in network: an image's class is its first pixel, its features lie near that class's centre, at an
        # offset given by its number (the next two pixels)
        labels, number = images[:, 0, 0, 0].long(), images[:, 0, 0, 1].long() * 256 + images[:, 0, 0, 2].long()
        features = centres[labels] + noise[number]
        flat = images[:, 0, 0, 3:4] == 1  # a non-digit the network answers with a flat softmax
        return torch.where(flat, 0.0, features @ centres.T / 4), features

    def digits(n: int, first: int) -> FitData:
        labels, number = torch.arange(n) % 10, torch.arange(first, first + n)
        images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1], images[:, 0, 0, 2] = labels, number // 256, number % 256
        return FitData(images, labels)

    train, val = digits(2000, 0), digits(1000, 2000)
    stats, held, where = split_fit_data(train, val)
    assert len(stats.labels) == 2000 and len(held.labels) == 1000 and "validation" in where
    detectors = fit_detectors(outputs, stats, held, 10)
    assert set(detectors) == set(SCORES)
    logits, features = outputs(held.images)
    for d in detectors.values():
        assert float((d.scores(logits, features) <= d.ood_threshold).double().mean()) >= 0.99
    # non-digit check images the softmax leaves flat (near the digits' features: the feature scores cannot tell):
    # every score may accept more digits; without check images, the floor
    flat = digits(200, 2500).images
    flat[:, 0, 0, 3] = 1
    loose = fit_detectors(outputs, stats, held, 10, outliers=flat)
    for name in SCORES:
        assert detectors[name].info["digit_acceptance"] == 0.99 and "outlier_check_images" not in detectors[name].info
        assert loose[name].info["digit_acceptance"] == 0.998 and loose[name].info["outlier_check_images"] == 200
        assert loose[name].info["outlier_check_confident"] == 0.0 and loose[name].unsure_threshold <= 1.0
        assert loose[name].ood_threshold >= detectors[name].ood_threshold
        scores = loose[name].scores(logits, features)
        assert float((scores <= loose[name].ood_threshold).double().mean()) >= 0.998
    # without a validation split the thresholds come from training images the statistics did not use
    stats, held, where = split_fit_data(train, None, limit=50)
    assert len(stats.labels) == len(held.labels) == 500 and "no validation split" in where
    assert torch.equal(stats.images, train.images[:500]) and torch.equal(held.images, train.images[-500:])
    # verdict_stats_on=writer_shift: the statistics' digits and their shifted copies, the thresholds' as before
    wider, same_held, said = split_fit_data(train, val, limit=50, also_shifted=lambda images: 255 - images)
    assert torch.equal(wider.images, torch.cat([train.images[:500], 255 - train.images[:500]]))
    assert torch.equal(wider.labels, torch.cat([train.labels[:500]] * 2))
    assert torch.equal(same_held.images, val.images[:500])
    assert said.startswith(f"statistics on 500 {STATS_ON['writer_shift']}")
    assert STATS_ON["clean"] in split_fit_data(train, val, limit=50)[2]


def test_a_stored_detector_is_used_and_unreadable_data_means_none() -> None:
    class Stub:  # what detector_for reads of a Scorer; it must not run the network for a stored detector
        module, num_classes = torch.nn.Identity(), 10

        def outputs(self, images: torch.Tensor, features: bool = True) -> None:
            raise AssertionError("no forward pass for a stored detector")

    stored = OODDetector(Energy(), -3.0, 0.8).state_dict()
    def never() -> None:
        pytest.fail("no data read for a stored detector")

    detector, source, others = detector_for(Stub(), stored, None, never)
    assert detector.name == "energy" and detector.ood_threshold == -3.0 and others == {}
    assert source.startswith("stored in the checkpoint")

    def unreadable() -> None:
        raise UserError("data.val_size=5000 leaves no training images")

    detector, source, _ = detector_for(Stub(), None, None, unreadable)
    assert detector is None and "cannot be read" in source and "val_size" in source
    with pytest.raises(UserError, match="out-of-domain detector is damaged"):
        detector_for(Stub(), {"score": "energy"}, None, never)


def test_the_meter_reports_each_score() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(200, 10, generator=g) * 4
    det = {s: OODDetector(SCORES[s](), 0.0, 0.6) for s in ("msp", "energy")}
    det["msp"].ood_threshold = acceptance_threshold(det["msp"].scores(logits))
    det["energy"].ood_threshold = acceptance_threshold(det["energy"].scores(logits))
    meter = OODMeter(det["energy"], "made here", {"msp": det["msp"]})
    meter.add_digits("clean", logits, None)
    meter.add_non_digits("flat", logits / 10, None)  # flatter logits: lower probabilities, higher energy
    result = meter.result
    assert result.score == "energy" and set(result.others) == {"msp"}
    assert result.auroc["flat"] > 0.9 and result.others["msp"].auroc["flat"] > 0.9
    assert result.out_of_domain["clean"] == pytest.approx(0.01)
    metrics = result.metrics()
    assert metrics["test/ood_auroc"] == result.auroc["flat"] and "test/ood_rejected/clean" in metrics
    assert "other_scores" in result.summary() and "msp" in result.summary()["other_scores"]


def test_the_robustness_report_has_an_out_of_domain_section(data_dir: Path, tmp_path: Path) -> None:
    from tests.builders import untrained_checkpoint
    from vit_mnist.evaluation.robustness import robustness
    from vit_mnist.reports.robustness import OOD_FILES

    ckpt = untrained_checkpoint(tmp_path / "untrained.ckpt", "mnist")
    saved = torch.load(ckpt, weights_only=True)
    saved["datamodule_hyper_parameters"] = {"name": "mnist", "val_size": 100, "split_seed": 0}  # as training records
    torch.save(saved, ckpt)
    out = tmp_path / "rob"
    summary = robustness(compose_config([f"paths.data_dir={data_dir}", *EVAL, f"ckpt_path={ckpt}", "only=[stripe]",
                                         "num_images=20", "pen_photos=false", "ood_score=energy"], out, "robustness"))
    ood = summary["models"][0]["ood"]
    assert ood["score"] == "energy" and "fitted on the fly" in ood["detector"]
    assert set(ood["auroc"]) == {"letters", "scribbles", "shapes", "noise", "fashion"}
    assert all(0.0 <= v <= 1.0 for v in [*ood["auroc"].values(), *ood["accepted_at_99"].values()])
    assert set(ood["out_of_domain"]) == {"clean", "other_writers", "corrupt/stripe"}
    assert set(ood["other_scores"]) == set(SCORES) - {"energy"}  # every other registered score, on the same images
    assert ood["sizes"]["letters"] == 20 and ood["sizes"]["clean"] == 20
    for name in OOD_FILES:
        assert (out / name).is_file(), name
    markdown = (out / "robustness.md").read_text()
    assert "## Out of domain" in markdown and "| letters: AUROC |" in markdown
    stripe = ood["out_of_domain"]["corrupt/stripe"]
    assert f"| corruptions most often `out_of_domain` (%) | stripe {100 * stripe:.2f} |" in markdown
    ece = summary["models"][0]["ece"]  # calibration under shift, beside the accuracy
    assert "## Calibration under shift" in markdown and {"clean", "stripe", "other_writers"} <= set(ece)
    assert ece["corrupted_mean"] == pytest.approx(ece["stripe"]) and all(0 <= v <= 1 for v in ece.values())
    assert f"| **mean AUROC** | **{ood['mean_auroc']:.4f}** |" in markdown
    rows = list(csv.reader(io.StringIO((out / "ood.csv").read_text())))
    assert rows[1][:2] == ["mean", "auroc"] and float(rows[1][2]) == pytest.approx(ood["mean_auroc"], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["models"][0]["ood_score"] == "energy"
    with pytest.raises(UserError, match="is not an out-of-domain score"):
        robustness(compose_config([f"paths.data_dir={data_dir}", *EVAL, f"ckpt_path={ckpt}", "ood_score=odin"],
                                  tmp_path / "bad", "robustness"))


def test_a_training_run_reports_test_ood_auroc(data_dir: Path, tmp_path: Path) -> None:
    from tests.builders import TABLE, tiny_module
    from vit_mnist.data import MNISTDataModule
    from vit_mnist.robustness_suite.after_training import measure_after_training

    datamodule = MNISTDataModule(name="mnist", data_dir=str(data_dir), val_size=100, eval_batch_size=100,
                                 download=False)
    datamodule.setup("fit")
    metrics = measure_after_training(tiny_module(), datamodule, None, {"stripe": TABLE["stripe"]}, tmp_path, [], 0,
                                     num_images=20)
    per_set = {k: v for k, v in metrics.items() if k.startswith("test/ood_auroc/")}
    assert set(per_set) == {f"test/ood_auroc/{k}" for k in ("letters", "scribbles", "shapes", "noise", "fashion")}
    assert metrics["test/ood_auroc"] == pytest.approx(sum(per_set.values()) / len(per_set))
    assert {"test/ood_rejected/clean", "test/ood_rejected/corrupted", "test/ood_rejected/other_writers",
            "test/ood_accepted/letters"} <= set(metrics)
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["models"][0]["ood"]["mean_auroc"] == pytest.approx(metrics["test/ood_auroc"])


def test_the_report_names_the_corruptions_rejected_most() -> None:
    from types import SimpleNamespace

    from vit_mnist.reports.robustness import _most_rejected

    ood = SimpleNamespace(out_of_domain={"clean": 0.9, "corrupt/fog": 0.1, "corrupt/canny_edges": 0.5,
                                         "corrupt/zigzag": 0.2, "corrupt/shear": 0.0})
    assert _most_rejected(ood) == "canny_edges 50.00, zigzag 20.00, fog 10.00"  # the digit sets are not corruptions
