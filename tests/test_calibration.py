"""Temperature scaling: the fit, the training run that stores it, and every place that applies it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from torchmetrics.functional.classification import multiclass_calibration_error

from tests.conftest import TINY, compose_config
from tests.deploy_helpers import tiny_checkpoint
from tests.synthetic import laid_out
from vit_mnist import load_model
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.errors import UserError
from vit_mnist.evaluation.evaluate import evaluate
from vit_mnist.inference import Predictor
from vit_mnist.inference.export import export, read_onnx_metadata
from vit_mnist.inference.files import predict_files
from vit_mnist.inference.web import create_app
from vit_mnist.models.outputs import run_network
from vit_mnist.models.tta import tta_logits
from vit_mnist.ood.detector import STATS_ON, UNSURE_ON
from vit_mnist.training.after_fit import RULE_KEY
from vit_mnist.training.calibration import (
    CALIBRATE_ON,
    fit_temperature,
    nll,
    noisy_copies,
)
from vit_mnist.training.checkpoints import (
    load_module,
    read_checkpoint,
    write_checkpoint,
)
from vit_mnist.training.fit import train
from vit_mnist.training.module import ViTClassifier

pytestmark = pytest.mark.xdist_group("calibration")

TEMPERATURE = 2.5  # written into a copy of the tiny checkpoint: far enough from 1 to change every probability
NO_CALIBRATION = "holds no calibration"  # the words of the one warning for a checkpoint without a temperature


def synthetic_logits(temperature: float, n: int = 20_000, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature): `temperature` is the calibrating one."""
    g = torch.Generator().manual_seed(seed)
    logits = 4.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=g)[:, 0]
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, labels = synthetic_logits(true_temperature)
    fitted = fit_temperature(logits.float(), labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert fit_temperature(logits.float(), labels) == fitted  # deterministic
    # the minimum: no better at the true temperature, and better than both neighbours and T = 1
    assert nll(logits, labels, fitted) <= nll(logits, labels, true_temperature) + 1e-9
    for other in (0.97 * fitted, 1.03 * fitted, 1.0):
        assert nll(logits, labels, fitted) < nll(logits, labels, other)


def test_fit_without_an_optimum_keeps_temperature_one(caplog: pytest.LogCaptureFixture) -> None:
    logits, _ = synthetic_logits(1.0, n=500)
    with caplog.at_level(logging.WARNING):
        # every label the arg max: the NLL keeps falling as T -> 0; every label the arg min: T -> infinity
        assert fit_temperature(logits, logits.argmax(dim=1)) == 1.0
        assert fit_temperature(logits, logits.argmin(dim=1)) == 1.0
    assert [r.getMessage().startswith("No temperature to fit") for r in caplog.records] == [True, True]
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.full((3, 10), float("nan")), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="N > 0"):
        fit_temperature(torch.zeros(3, 10), torch.zeros(2, dtype=torch.long))


class Collect(logging.Handler):
    """The messages logged while it is attached."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def calibrated_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A short run with test-time shifts, stopped early so that its validation split is not classified perfectly."""
    out = tmp_path_factory.mktemp("calibrated")
    cfg = compose_config(TINY + [f"paths.data_dir={data_dir}", "trainer.max_epochs=1", "trainer.limit_train_batches=6",
                                 "tta=true", "logger=csv"], out)
    warnings = Collect(level=logging.WARNING)
    logging.getLogger("vit_mnist").addHandler(warnings)
    try:
        metrics = train(cfg)
    finally:
        logging.getLogger("vit_mnist").removeHandler(warnings)
    assert not [m for m in warnings.messages if NO_CALIBRATION in m]  # the run's own checkpoint is not "old"
    return out, metrics


def test_training_fits_the_temperature_on_validation_and_tests_with_it(calibrated_run: tuple[Path, dict],
                                                                         data_dir: Path) -> None:
    out, metrics = calibrated_run
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("calibration/temperature", "calibration/val_nll", "calibration/val_nll_raw", "test/ece",
                "test/ece_raw", "test/nll", "test/nll_raw"):
        assert saved[key] == pytest.approx(metrics[key]), key
    temperature = metrics["calibration/temperature"]
    assert abs(temperature - 1.0) > 1e-3 and metrics["calibration/val_nll"] < metrics["calibration/val_nll_raw"]
    stored = read_checkpoint(metrics["best_checkpoint"])["calibration"]
    assert stored["temperature"] == temperature and stored["tta"] is True
    recorded = read_checkpoint(metrics["best_checkpoint"])[RULE_KEY]  # what `vit_mnist.calibrate` repeats
    assert recorded["calibrate_on"] == "clean" and recorded["verdict_unsure_on"] == "clean"

    # Independently: the validation split's logits with the test-time shifts give the same temperature ...
    module = load_module(metrics["best_checkpoint"])
    assert module.temperature == temperature
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100, download=False)
    dm.setup("fit")
    dm.setup("test")
    with torch.no_grad():
        val_logits = tta_logits(module, dm.transform(dm.val_set.images))
        test_logits = tta_logits(module, dm.transform(dm.test_set.images))
    assert fit_temperature(val_logits, dm.val_set.labels) == pytest.approx(temperature, rel=1e-5)
    # ... and the test metrics are those of softmax(logits / T), the raw ones those of the network's softmax
    labels = dm.test_set.labels
    assert metrics["test/nll"] == pytest.approx(F.cross_entropy(test_logits / temperature, labels).item(), rel=1e-4)
    assert metrics["test/nll_raw"] == pytest.approx(F.cross_entropy(test_logits, labels).item(), rel=1e-4)
    for key, logits in (("test/ece", test_logits / temperature), ("test/ece_raw", test_logits)):
        ece = multiclass_calibration_error(logits.softmax(dim=1), labels, 10, n_bins=15, norm="l1").item()
        assert metrics[key] == pytest.approx(ece, abs=1e-5), key
    report = json.loads((out / "classification_report.json").read_text())
    assert report["ece"] == pytest.approx(metrics["test/ece"], abs=1e-5)
    assert report["ece_raw"] == pytest.approx(metrics["test/ece_raw"], abs=1e-5)
    assert report["temperature"] == pytest.approx(temperature)


@pytest.mark.parametrize("calibrate", [True, False])
def test_calibrate_switch_without_a_checkpoint(calibrate: bool, data_dir: Path, tmp_path: Path) -> None:
    """debug=fdr keeps no checkpoint: the in-memory model is calibrated (or not) and tested."""
    no_callbacks = [o for o in TINY if not o.startswith("callbacks.")]  # debug=fdr has none
    metrics = train(compose_config(no_callbacks + [f"paths.data_dir={data_dir}", "debug=fdr",
                                                   f"calibrate={str(calibrate).lower()}"], tmp_path))
    assert ("calibration/val_nll" in metrics) is calibrate
    if metrics["calibration/temperature"] == 1.0:
        assert metrics["test/nll"] == pytest.approx(metrics["test/nll_raw"], rel=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def calibrated_tta(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint as a run with test-time shifts and a fitted temperature of TEMPERATURE would write it."""
    ckpt = read_checkpoint(tiny)
    ckpt["hyper_parameters"]["tta"] = True
    ckpt["calibration"] = {"temperature": TEMPERATURE, "split": "val"}
    path = tmp_path_factory.mktemp("calibrated_tta") / "checkpoints" / "best.ckpt"
    path.parent.mkdir()
    write_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="module")
def images(data_dir: Path) -> torch.Tensor:
    return laid_out(load_split("mnist", str(data_dir), "test", download=False)[0][:12])


def expected_probabilities(ckpt: Path, images: torch.Tensor, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """softmax(shifted-logits / TEMPERATURE), computed here from the network; and the uncalibrated softmax."""
    net = load_module(ckpt).net
    with torch.no_grad():
        logits = tta_logits(net, MNISTDataModule(data_dir=str(data_dir)).transform(images)).double()
    calibrated, raw = (logits / TEMPERATURE).softmax(dim=1).numpy(), logits.softmax(dim=1).numpy()
    assert np.abs(calibrated - raw).max() > 0.01  # the temperature matters for these images
    return calibrated, raw


def test_predict_api_and_serve_apply_the_stored_temperature(calibrated_tta: Path, images: torch.Tensor,
                                                            data_dir: Path, tmp_path: Path) -> None:
    expected, _ = expected_probabilities(calibrated_tta, images, data_dir)
    predictor = Predictor.from_checkpoint(calibrated_tta)
    assert predictor.temperature == TEMPERATURE and predictor.tta
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[0].numpy()).save(files[-1])
    results = predict_files(predictor, files, top_k=10)
    for result, probs in zip(results, expected, strict=True):
        got = np.array([t["probability"] for t in sorted(result["top_k"], key=lambda t: t["label"])])
        np.testing.assert_allclose(got, probs, atol=1e-6)
    classifier = load_model(calibrated_tta)
    assert classifier.temperature == TEMPERATURE
    np.testing.assert_allclose(classifier.predict(images).probabilities, expected, atol=1e-6)
    with TestClient(create_app(predictor)) as client:
        assert client.get("/healthz").json()["temperature"] == TEMPERATURE
        for image, probs in zip(images[:3], expected, strict=False):
            body = client.post("/api/predict", json={"pixels": image[0].tolist()}).json()
            np.testing.assert_allclose(body["probabilities"], probs, atol=2e-6)


def test_onnx_export_divides_by_the_temperature_inside_the_graph(calibrated_tta: Path, images: torch.Tensor,
                                                                  data_dir: Path, tmp_path: Path) -> None:
    expected, _ = expected_probabilities(calibrated_tta, images, data_dir)
    x = MNISTDataModule(data_dir=str(data_dir)).transform(images)
    with torch.no_grad():
        logits = tta_logits(load_module(calibrated_tta).net, x).numpy()
    summary = export(calibrated_tta, "onnx", output=tmp_path / "model.onnx")
    assert summary["max_abs_diff"] <= 1e-4  # the export's own check, on both outputs
    meta = read_onnx_metadata(summary["output"])
    assert float(meta["temperature"]) == TEMPERATURE and json.loads(meta["tta"]) is True
    session = ort.InferenceSession(summary["output"], providers=["CPUExecutionProvider"])
    for batch in (slice(0, 1), slice(None)):  # the batch axis stays dynamic with the shifts in the graph
        out_logits, out_probs, _ = session.run(None, {"image": x[batch].numpy()})
        np.testing.assert_allclose(out_logits, logits[batch], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out_probs, expected[batch], atol=1e-5, rtol=0)


def test_evaluate_reports_before_and_after_calibration(calibrated_tta: Path, data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={calibrated_tta}", "data.eval_batch_size=100",
                          "data.download=false", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "~logger"], tmp_path, "evaluate")
    metrics = evaluate(cfg)
    test_images, labels = load_split("mnist", str(data_dir), "test", download=False)
    with torch.no_grad():
        logits = tta_logits(load_module(calibrated_tta).net, MNISTDataModule(data_dir=str(data_dir)).transform(test_images))
    assert metrics["calibration/temperature"] == TEMPERATURE and metrics["tta"] is True
    for key, scaled in (("test/ece", logits / TEMPERATURE), ("test/ece_raw", logits)):
        ece = multiclass_calibration_error(scaled.softmax(dim=1), labels, 10, n_bins=15, norm="l1").item()
        assert metrics[key] == pytest.approx(ece, abs=1e-5), key
    assert metrics["test/nll"] == pytest.approx(F.cross_entropy(logits / TEMPERATURE, labels).item(), rel=1e-4)
    report = json.loads((tmp_path / "classification_report.json").read_text())
    assert report["ece_raw"] == pytest.approx(metrics["test/ece_raw"], abs=1e-5)
    assert "before calibration" in (tmp_path / "classification_report.md").read_text()
    assert (tmp_path / "calibration.png").stat().st_size > 1000


def test_old_checkpoint_loads_with_temperature_one_and_warns_once(tiny: Path, calibrated_tta: Path, images: torch.Tensor,
                                                                 data_dir: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "old.ckpt"
    ckpt = read_checkpoint(tiny)
    ckpt.pop("calibration", None)
    torch.save(ckpt, old)
    x = MNISTDataModule(data_dir=str(data_dir)).transform(images).numpy()
    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_checkpoint(old)
        for _ in range(3):
            probabilities = predictor.probabilities(x)
    assert predictor.temperature == 1.0
    assert [NO_CALIBRATION in r.getMessage() for r in caplog.records] == [True]  # once, not per prediction
    assert "python -m vit_mnist.calibrate ckpt_path=" in caplog.records[0].getMessage()  # the fix, not "retrain"
    with torch.no_grad():
        np.testing.assert_allclose(probabilities, predictor.net(torch.from_numpy(x)).double().softmax(dim=1).numpy(),
                                   atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert ViTClassifier.load_from_checkpoint(old, map_location="cpu").temperature == 1.0  # Lightning's path
        assert ViTClassifier.load_from_checkpoint(calibrated_tta, map_location="cpu").temperature == TEMPERATURE
        assert load_module(calibrated_tta).temperature == TEMPERATURE
    assert [NO_CALIBRATION in r.getMessage() for r in caplog.records] == [True]


def test_a_damaged_temperature_is_a_user_error(calibrated_tta: Path, tmp_path: Path) -> None:
    ckpt = read_checkpoint(calibrated_tta)
    ckpt["calibration"]["temperature"] = -1.0
    bad = tmp_path / "bad.ckpt"
    write_checkpoint(ckpt, bad)
    with pytest.raises(UserError, match="not a positive number"):
        load_module(bad)


def test_the_calibrate_command_gives_an_old_checkpoint_its_temperature_and_verdicts(
        data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from vit_mnist.evaluation.calibrate import calibrate_checkpoint

    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "trainer.max_epochs=2", "logger=csv", "test=false",
                          "calibrate=false", "verdicts=false"], tmp_path / "old")
    ckpt = Path(train(cfg)["best_checkpoint"])
    before = torch.load(ckpt, weights_only=True)
    assert "calibration" not in before and "ood_detector" not in before  # as a checkpoint from before the verdicts
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.detector is None and predictor.temperature == 1.0

    metrics = calibrate_checkpoint(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}",
                                                   "data.download=false", "data.eval_batch_size=100"],
                                                  tmp_path / "cal", "calibrate"))
    after = torch.load(ckpt, weights_only=True)
    assert after["calibration"]["temperature"] == pytest.approx(metrics["calibration/temperature"])
    assert after["ood_detector"]["score"] == "mahalanobis" == metrics["verdict/score"]
    assert torch.equal(after["state_dict"]["net.head.weight"], before["state_dict"]["net.head.weight"])
    assert json.loads((tmp_path / "cal" / "metrics.json").read_text())["verdict/score"] == "mahalanobis"
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.detector is not None and predictor.temperature == pytest.approx(metrics["calibration/temperature"])
    noise = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    verdicts = predictor.answer(np.stack([predictor.prepare(image)[0] for image in noise])).verdicts
    assert set(verdicts) <= {"confident", "unsure", "out_of_domain"} and "out_of_domain" in verdicts
    assert after["ood_detector"]["info"]["unsure_fixed_on"] == UNSURE_ON["clean"]

    # the confidence fixed on the same digits drawn as other writers', the statistics on both: recorded
    calibrate_checkpoint(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", "data.download=false",
                                         "data.eval_batch_size=100", "verdict_unsure_on=writer_shift",
                                         "verdict_stats_on=writer_shift", "verdict_flat_gate=0.12",
                                         "verdict_shift_strength=0.5", "verdict_max_acceptance=0.99"],
                                        tmp_path / "cal2", "calibrate"))
    shifted = torch.load(ckpt, weights_only=True)["ood_detector"]
    # at half the shift's strength, which both descriptions record
    assert shifted["info"]["unsure_fixed_on"].startswith(UNSURE_ON["writer_shift"][:-len("(writer shift)")])
    assert "(writer shift at strength 0.5)" in shifted["info"]["unsure_fixed_on"] and shifted["flat_threshold"] == 0.12
    assert after["ood_detector"]["flat_threshold"] == 0.0
    assert STATS_ON["clean"] in after["ood_detector"]["info"]["fitted_on"]
    half = STATS_ON["writer_shift"].replace("(writer shift)", "(writer shift at strength 0.5)")
    assert half in shifted["info"]["fitted_on"] and shifted["info"]["shift_strength"] == 0.5
    assert "shift_strength" not in after["ood_detector"]["info"]  # no shift in the default rule
    assert shifted["info"]["digit_acceptance"] == 0.99  # capped at the floor: no looser acceptance tried
    assert after["ood_detector"]["info"]["digit_acceptance"] > 0.99  # where the default rule took a looser one
    assert shifted["info"]["statistics_images"] == 2 * after["ood_detector"]["info"]["statistics_images"]

    # each fit records its keys; a refit with none on its command line repeats them, one given replaces its own
    recorded = torch.load(ckpt, weights_only=True)[RULE_KEY]
    assert recorded == {"calibrate_on": "clean", "ood_score": "mahalanobis", "verdict_unsure_on": "writer_shift",
                        "verdict_stats_on": "writer_shift", "verdict_flat_gate": 0.12, "verdict_shift_strength": 0.5,
                        "verdict_max_acceptance": 0.99}
    calibrate_checkpoint(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", "data.download=false",
                                         "data.eval_batch_size=100"], tmp_path / "cal3", "calibrate"))
    again = torch.load(ckpt, weights_only=True)
    assert again[RULE_KEY] == recorded and again["ood_detector"]["info"] == shifted["info"]
    for key in ("ood_threshold", "unsure_threshold", "flat_threshold"):
        assert again["ood_detector"][key] == shifted[key]
    calibrate_checkpoint(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", "data.download=false",
                                         "data.eval_batch_size=100", "verdict_unsure_on=clean"],
                                        tmp_path / "cal4", "calibrate"))
    clean_unsure = torch.load(ckpt, weights_only=True)
    assert clean_unsure[RULE_KEY] == {**recorded, "verdict_unsure_on": "clean"}
    assert clean_unsure["ood_detector"]["info"]["unsure_fixed_on"] == UNSURE_ON["clean"]
    assert clean_unsure["ood_detector"]["flat_threshold"] == 0.12  # the recorded gate kept
    assert not [r for r in caplog.records if "before checkpoints recorded" in r.getMessage()]
    # a checkpoint fitted before the keys were recorded: the defaults, and the refit says so
    del clean_unsure[RULE_KEY]
    write_checkpoint(clean_unsure, ckpt)
    calibrate_checkpoint(compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}", "data.download=false",
                                         "data.eval_batch_size=100"], tmp_path / "cal5", "calibrate"))
    assert torch.load(ckpt, weights_only=True)[RULE_KEY]["verdict_flat_gate"] == 0.0
    assert [r.levelname for r in caplog.records if "before checkpoints recorded" in r.getMessage()] == ["WARNING"]


def test_noisy_copies_run_from_clean_to_unreadable_and_are_the_same_every_time() -> None:
    images = torch.zeros(400, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 12:16] = 255  # a bar on a black background
    kept = images.clone()
    noisy = noisy_copies(images)
    assert noisy.dtype == torch.uint8 and noisy.shape == images.shape and torch.equal(images, kept)
    assert torch.equal(noisy_copies(images), noisy) and not torch.equal(noisy_copies(images, seed=2), noisy)
    changed = (noisy.float() - images.float()).abs().mean(dim=(1, 2, 3)) / 255  # how far each copy moved
    # each image its own strength, evenly from none to unreadable (std 1: most pixels pushed to 0 or 255), in a
    # drawn order
    assert float(changed.min()) < 0.01 and float(changed.max()) > 0.3
    assert 0.15 < float(changed.median()) < 0.25 and float(changed.std()) > 0.07
    assert float(changed[:200].mean()) == pytest.approx(float(changed[200:].mean()), abs=0.03)


def test_the_temperature_fitted_on_noisy_copies_too(tiny: Path, data_dir: Path, tmp_path: Path) -> None:
    from vit_mnist.evaluation.calibrate import calibrate_checkpoint

    temperatures = {}
    for on in CALIBRATE_ON:
        path = tmp_path / f"{on}.ckpt"
        write_checkpoint(read_checkpoint(tiny), path)
        metrics = calibrate_checkpoint(compose_config(
            [f"paths.data_dir={data_dir}", f"ckpt_path={path}", "data.download=false", "verdicts=false",
             "trainer.precision=32-true", f"calibrate_on={on}"], tmp_path / on, "calibrate"))
        stored = read_checkpoint(path)["calibration"]
        assert stored["fitted_on"] == CALIBRATE_ON[on] and stored["temperature"] == metrics["calibration/temperature"]
        temperatures[on] = stored["temperature"]

    # Independently: the validation digits' logits as the test computes them, and their noisy copies' logits
    module, recorded = load_module(tiny), read_checkpoint(tiny)["datamodule_hyper_parameters"]
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=recorded["val_size"], split_seed=recorded["split_seed"],
                         download=False)
    dm.setup("fit")
    val, labels = dm.val_set.images, dm.val_set.labels

    def logits(images: torch.Tensor) -> torch.Tensor:
        return run_network(module.net, images, dm.mean, dm.std, tta=bool(module.hparams.get("tta")))[0]

    clean = logits(val)
    assert temperatures["clean"] == pytest.approx(fit_temperature(clean, labels), rel=1e-4)
    half = (len(labels) + 1) // 2  # the first half again under noise, counted twice
    noisy = logits(noisy_copies(val[:half]))
    both = fit_temperature(torch.cat([clean, noisy, noisy]), torch.cat([labels, labels[:half], labels[:half]]))
    assert temperatures["noisy"] == pytest.approx(both, rel=1e-4)
    assert abs(temperatures["noisy"] - temperatures["clean"]) > 1e-3  # the noisy half moved it


@pytest.mark.parametrize("case", ["missing", "foreign", "nothing_to_fit", "unsure_on", "stats_on", "flat_gate",
                                  "shift_strength", "max_acceptance", "calibrate_on"])
def test_the_calibrate_command_refuses_bad_input_and_writes_nothing(case: str, data_dir: Path, tmp_path: Path) -> None:
    from vit_mnist.evaluation.calibrate import calibrate_checkpoint

    path = tmp_path / "model.ckpt"
    extra = []
    if case == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)  # a PyTorch file, but not a checkpoint of this project
    elif case == "nothing_to_fit":
        torch.save({"weights": torch.zeros(3)}, path)
        extra = ["calibrate=false", "verdicts=false"]
    elif case in ("unsure_on", "stats_on", "flat_gate", "shift_strength", "max_acceptance", "calibrate_on"):
        torch.save({"weights": torch.zeros(3)}, path)
        extra = [{"unsure_on": "verdict_unsure_on=writers", "stats_on": "verdict_stats_on=augmented",
                  "flat_gate": "verdict_flat_gate=0.7", "shift_strength": "verdict_shift_strength=2",
                  "max_acceptance": "verdict_max_acceptance=0.97", "calibrate_on": "calibrate_on=foggy"}[case]]
    before = path.read_bytes() if path.exists() else None
    cfg = compose_config([f"paths.data_dir={data_dir}", f"ckpt_path={path}", "data.download=false", *extra],
                         tmp_path / "cal", "calibrate")
    with pytest.raises(UserError) as raised:
        calibrate_checkpoint(cfg)
    message = str(raised.value)
    assert "\n" not in message.strip() and len(message) > 40
    assert {"missing": "does not exist", "foreign": str(path), "nothing_to_fit": "nothing to fit",
            "unsure_on": "verdict_unsure_on='writers'", "stats_on": "verdict_stats_on='augmented'",
            "flat_gate": "verdict_flat_gate=0.7", "shift_strength": "verdict_shift_strength=2",
            "max_acceptance": "verdict_max_acceptance=0.97", "calibrate_on": "calibrate_on='foggy'"}[case] in message
    assert (path.read_bytes() if path.exists() else None) == before


def test_the_calibrate_command_computes_in_the_fastest_precision_of_the_machine(tmp_path: Path) -> None:
    from vit_mnist.runtime.hardware import fastest_precision

    cfg = compose_config(["ckpt_path=x.ckpt"], tmp_path, "calibrate")
    assert cfg.trainer.precision == fastest_precision(cfg.trainer.accelerator)
    cpu = compose_config(["ckpt_path=x.ckpt", "trainer.accelerator=cpu"], tmp_path, "calibrate")
    assert cpu.trainer.precision in ("bf16-mixed", "32-true")  # never fp16 on a CPU
    assert compose_config(["ckpt_path=x.ckpt", "trainer.precision=32-true"], tmp_path,
                          "calibrate").trainer.precision == "32-true"  # an explicit choice wins
