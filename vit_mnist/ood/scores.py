"""Out-of-domain scores, one class each (name, description, what it needs, `fit`, `__call__`), in a registry by name.

Every score is an outlier score: the higher, the less an image looks like the training data. Adding a score is one
class here with `@register` and its test: the detector, the checks of `ood_score`, the benchmark and the reports
take their names and descriptions from `SCORES`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from vit_mnist.errors import UserError

SHRINKAGE = 1e-3  # ridge on the shared covariance, as a fraction of its mean variance: keeps it invertible
ENERGY_TEMPERATURE = 1.0


class Score:
    """An outlier score of a classifier's outputs. Scores with statistics fit them on training digits' features
    (`fit`) and keep them as plain tensors (`state_dict`, `from_state`), which go into a checkpoint."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_features: ClassVar[bool] = False  # the network's pre-logit features, besides its logits

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        """Fit the score's statistics on training digits (nothing to fit by default)."""

    @property
    def fitted(self) -> bool:
        return True

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Score:
        """The score with the statistics `state_dict()` gave; ValueError when they are missing or inconsistent."""
        return cls()

    def describe(self, temperature: float = 1.0) -> str:
        return self.description


SCORES: dict[str, type[Score]] = {}


def register(cls: type[Score]) -> type[Score]:
    SCORES[cls.name] = cls
    return cls


@register
class MaxSoftmax(Score):
    """-log of the largest calibrated softmax probability (Hendrycks & Gimpel, 2017): the maximum softmax
    probability's order, without its saturation at 1.0 in floating point."""

    name = "msp"
    description = "maximum softmax probability"

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        z = logits.double() / temperature
        top = z.argmax(dim=-1, keepdim=True)
        # log(1 + sum of the others' exp(z_j - z_max)): no 1 + tiny rounding to 1 for very sure answers
        return torch.log1p(torch.exp(z - z.gather(-1, top)).scatter(-1, top, 0.0).sum(dim=-1))

    def describe(self, temperature: float = 1.0) -> str:
        return f"{self.description} (temperature {temperature:.3g})"


@register
class Energy(Score):
    """-T logsumexp(logits / T), T = 1 (Liu et al., NeurIPS 2020): low for the training data's images."""

    name = "energy"
    description = "energy score"

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        return -ENERGY_TEMPERATURE * torch.logsumexp(logits.double() / ENERGY_TEMPERATURE, dim=-1)


@register
class Mahalanobis(Score):
    """The smallest squared Mahalanobis distance of the pre-logit features to a class mean, with class means and
    one shared covariance fitted on training images (Lee et al., NeurIPS 2018; no input perturbation, last layer)."""

    name = "mahalanobis"
    description = "Mahalanobis distance on the features"
    needs_features = True

    def __init__(self, class_means: torch.Tensor | None = None, precision: torch.Tensor | None = None):
        self.class_means, self.precision = class_means, precision

    @property
    def fitted(self) -> bool:
        return self.class_means is not None and self.precision is not None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.class_means, self.precision = fit_class_gaussians(features, labels, num_classes)

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        if features is None or not self.fitted:
            raise ValueError("the Mahalanobis score needs the features and the fitted class means and precision")
        return mahalanobis_score(features, self.class_means, self.precision)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            return {}
        return {"class_means": self.class_means.detach().float().cpu(),
                "precision": self.precision.detach().float().cpu()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Score:
        means, precision = state.get("class_means"), state.get("precision")
        if not (isinstance(means, torch.Tensor) and isinstance(precision, torch.Tensor) and means.ndim == 2
                and precision.shape == (means.shape[1], means.shape[1])):
            raise ValueError("the Mahalanobis statistics are missing or their shapes do not match")
        return cls(means, precision)


@register
class RelativeMahalanobis(Mahalanobis):
    """The Mahalanobis distance to the nearest class minus the distance to one Gaussian of all training features
    (Ren et al., 2021): a shift that moves an image away from every class alike, as another writer's style does,
    cancels; what is far from the classes but not from digits in general scores low."""

    name = "relative_mahalanobis"
    description = "relative Mahalanobis distance on the features"

    def __init__(self, class_means: torch.Tensor | None = None, precision: torch.Tensor | None = None,
                 background_mean: torch.Tensor | None = None, background_precision: torch.Tensor | None = None):
        super().__init__(class_means, precision)
        self.background_mean, self.background_precision = background_mean, background_precision

    @property
    def fitted(self) -> bool:
        return super().fitted and self.background_mean is not None and self.background_precision is not None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        super().fit(features, labels, num_classes)
        mean, precision = fit_class_gaussians(features, torch.zeros_like(labels), 1)  # one class: all of them
        self.background_mean, self.background_precision = mean, precision

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        if features is None or not self.fitted:
            raise ValueError("the relative Mahalanobis score needs the features and its fitted statistics")
        # no clamp here: the difference is negative for images closer to a class than to digits in general
        f, mu, p = features.double(), self.class_means.double(), self.precision.double()
        fp = f @ p
        to_classes = ((fp * f).sum(dim=1, keepdim=True) - 2 * fp @ mu.T + ((mu @ p) * mu).sum(dim=1)[None]).min(dim=1)
        return to_classes.values - mahalanobis_score(features, self.background_mean, self.background_precision)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            return {}
        return {**super().state_dict(), "background_mean": self.background_mean.detach().float().cpu(),
                "background_precision": self.background_precision.detach().float().cpu()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Score:
        classes = Mahalanobis.from_state(state)
        mean, precision = state.get("background_mean"), state.get("background_precision")
        width = classes.precision.shape[0]
        if not (isinstance(mean, torch.Tensor) and isinstance(precision, torch.Tensor) and mean.shape == (1, width)
                and precision.shape == classes.precision.shape):
            raise ValueError("the background statistics are missing or their shapes do not match")
        return cls(classes.class_means, classes.precision, mean, precision)


@register
class NearestNeighbours(Score):
    """The distance of the L2-normalised features to their k-th nearest training image's (Sun et al., ICML 2022):
    no Gaussian assumed; the training images' normalised features are the statistics."""

    name = "knn"
    description = "distance to the k-th nearest training image on the normalised features"
    needs_features = True
    K = 10  # of the 5,000 training images the statistics keep (Sun et al. use k = 50 of 50,000 for CIFAR-10)

    def __init__(self, bank: torch.Tensor | None = None):
        self.bank = bank

    @property
    def fitted(self) -> bool:
        return self.bank is not None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        self.bank = torch.nn.functional.normalize(features.float(), dim=1)

    def __call__(self, logits: torch.Tensor, features: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        if features is None or not self.fitted:
            raise ValueError("the k-nearest-neighbour score needs the features and the training images' features")
        z = torch.nn.functional.normalize(features.float(), dim=1)
        bank = self.bank.to(z.device, z.dtype)
        # |a - b|^2 = 2 - 2 a.b for unit vectors: the k-th largest similarity is the k-th smallest distance
        similarity = (z @ bank.T).topk(min(self.K, len(bank)), dim=1).values[:, -1]
        return (2.0 - 2.0 * similarity.double()).clamp_min(0.0).sqrt()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank.detach().float().cpu()} if self.fitted else {}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Score:
        bank = state.get("bank")
        if not (isinstance(bank, torch.Tensor) and bank.ndim == 2 and len(bank) > 0):
            raise ValueError("the k-nearest-neighbour bank is missing or not a (N, D) tensor")
        return cls(bank)


def fit_class_gaussians(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                        shrinkage: float = SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (K, D) and the precision (D, D) of the covariance they share (Lee et al., 2018), a ridge of
    `shrinkage` times the mean variance added. Every class needs an image."""
    f, y = features.double(), labels.long()
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise UserError(f"The images for the Mahalanobis statistics have no example of class(es) {missing}: fit them "
                        "on more training images (every class needs some).")
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, y, f)
    means = sums / counts[:, None]
    centred = f - means[y]
    covariance = centred.T @ centred / len(f)
    ridge = shrinkage * float(covariance.diagonal().mean()) + 1e-12
    precision = torch.linalg.inv(covariance + ridge * torch.eye(f.shape[1], dtype=torch.float64, device=f.device))
    return means, (precision + precision.T) / 2


def mahalanobis_score(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """min over classes of (f - mean_c)^T precision (f - mean_c) (N,), in float64."""
    f, mu, p = features.double(), means.double(), precision.double()
    fp = f @ p
    distances = (fp * f).sum(dim=1, keepdim=True) - 2 * fp @ mu.T + ((mu @ p) * mu).sum(dim=1)[None]
    return distances.min(dim=1).values.clamp_min(0.0)


def score_names() -> str:
    """"msp: maximum softmax probability, energy: ..." for messages."""
    return ", ".join(f"{name}: {cls.description}" for name, cls in SCORES.items())


def check_score(score: Any, default: str) -> str | None:
    """`score` if it names a registered score (None: the default); a `UserError` otherwise."""
    if score is None or score in SCORES:
        return score
    raise UserError(f"ood_score={score!r} is not an out-of-domain score: choose one of {list(SCORES)} "
                    f"({score_names()}), or null for the checkpoint's own ({default} when it has none).")

