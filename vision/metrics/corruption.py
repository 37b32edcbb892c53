"""Corruption error (CE), mCE and relative mCE of Hendrycks & Dietterich (ICLR 2019), AlexNet-normalised.

Errors are top-1 error *fractions* in [0, 1], keyed by (corruption, severity). For a model f:

- CE(c) = sum_s E(f, c, s) / sum_s E(AlexNet, c, s); mCE = 100 x mean of CE over the 15 benchmark
  corruptions (AlexNet = 100).
- relative CE(c) = sum_s [E(f, c, s) - E_clean(f)] / sum_s [E(AlexNet, c, s) - E_clean(AlexNet)];
  relative mCE = 100 x its mean over the 15.
- mean corruption error = plain mean over the 15 x 5 errors (what ImageNet-C's ``test.py`` prints
  and the CIFAR-10-C / CIFAR-100-C literature reports as error; no normaliser).
- the 4 hold-out corruptions never enter mCE; their mean error (and CE against AlexNet's published
  hold-out means) is reported separately.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vision.corruptions.params import ALL, COMMON, HOLDOUT

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionBaseline:
    """A reference model's ImageNet-C errors: the normaliser of CE and mCE (versioned, never edited)."""

    name: str
    version: str
    source: str
    clean_error: float
    errors: Mapping[str, tuple[float, ...]]  # the 15 benchmark corruptions, severities 1-5
    mean_errors: Mapping[str, float]  # published severity means: the 15 and the 4 hold-out ones

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


ALEXNET_V1 = CorruptionBaseline(
    name="alexnet",
    version="1",
    source=("torchvision AlexNet on ImageNet-C: per-severity errors of the constants file imported by the "
            "validate script of timm's 'bits' branch; their means are the 15 values of AugMix's imagenet.py; "
            "hold-out means from third-party evaluation scripts; clean error 0.4345 (third-party constant)"),
    clean_error=0.4345,
    errors={
        "gaussian_noise": (.69528, .82542, .93554, .98138, .99452),
        "shot_noise": (.71224, .85108, .93574, .98182, .99146),
        "impulse_noise": (.78374, .89808, .94870, .98720, .99548),
        "defocus_blur": (.65624, .73202, .85036, .91364, .94714),
        "glass_blur": (.64308, .75054, .88806, .91622, .93344),
        "motion_blur": (.58430, .70048, .82108, .89750, .92638),
        "zoom_blur": (.70008, .76992, .80784, .84198, .87198),
        "snow": (.71726, .88392, .86468, .91870, .94952),
        "frost": (.61390, .79734, .88790, .89942, .93430),
        "fog": (.67474, .76050, .84378, .87260, .94500),
        "brightness": (.45140, .48502, .54048, .62166, .72440),
        "contrast": (.64548, .76150, .88874, .97760, .99270),
        "elastic_transform": (.52596, .70116, .55686, .64076, .80554),
        "pixelate": (.52218, .54620, .73728, .87092, .91262),
        "jpeg_compression": (.51002, .54718, .57294, .65458, .74778),
    },
    mean_errors={
        "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
        "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
        "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
        "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
        "speckle_noise": 0.845388, "gaussian_blur": 0.787108, "spatter": 0.717512, "saturate": 0.658248,
    },
)
ALEXNET = ALEXNET_V1  # the current default; a new table gets a new version, never an edit


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """CE: the model's summed errors over the baseline's, severity for severity."""
    _check_pair(errors, baseline_errors)
    return sum(errors) / sum(baseline_errors)


def relative_corruption_error(errors: Sequence[float], clean_error: float, baseline_errors: Sequence[float],
                              baseline_clean_error: float) -> float:
    """Relative CE: the model's summed degradation over the baseline's, both measured from clean error."""
    _check_pair(errors, baseline_errors)
    return (sum(e - clean_error for e in errors)
            / sum(b - baseline_clean_error for b in baseline_errors))


def _check_pair(errors: Sequence[float], baseline_errors: Sequence[float]) -> None:
    if len(errors) != len(baseline_errors) or not errors:
        raise ValueError(f"need one error per severity for model and baseline; got {len(errors)} and "
                         f"{len(baseline_errors)}")


@dataclass
class CorruptionResult:
    """ImageNet-C style summary; errors are fractions, ``mce``/``relative_mce`` are percentages (AlexNet = 100)."""

    errors: dict[str, tuple[float, ...]]  # every corruption given, severities 1-5
    mean_errors: dict[str, float]  # per corruption, mean over severities
    mean_corruption_error: float  # plain mean over the 15 x 5 (unnormalised; CIFAR-C convention)
    clean_error: float | None = None
    ce: dict[str, float] | None = None  # the 15, AlexNet-normalised (None without a baseline)
    mce: float | None = None
    relative_ce: dict[str, float] | None = None  # needs clean_error and a baseline
    relative_mce: float | None = None
    holdout_error: float | None = None  # mean over the 4 hold-out corruptions x 5 (None if not given)
    holdout_ce: dict[str, float] | None = None  # against the baseline's published hold-out means
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        out = asdict(self)
        out["errors"] = {k: list(v) for k, v in self.errors.items()}
        return out


def summarize_corruption_errors(errors: Mapping[tuple[str, int], float], clean_error: float | None = None, *,
                                baseline: CorruptionBaseline | None = ALEXNET) -> CorruptionResult:
    """CE, mCE, relative mCE, mean error and hold-out error from {(corruption, severity): error}.

    All 15 benchmark corruptions x 5 severities must be present; the 4 hold-out corruptions are
    optional but all-or-none. ``baseline=None`` skips the AlexNet-normalised numbers (e.g. for
    CIFAR-10-C, where only the mean error is conventional).
    """
    table = _validate(errors)
    if clean_error is not None:
        _check_fraction(clean_error, "clean error")
    missing = [(c, s) for c in COMMON for s in SEVERITIES if (c, s) not in table]
    if missing:
        raise ValueError(f"missing {len(missing)} of the 75 benchmark errors, e.g. {missing[:3]}; "
                         "mCE needs all 15 corruptions at severities 1-5")
    given_holdout = [(c, s) for c in HOLDOUT for s in SEVERITIES if (c, s) in table]
    if given_holdout and len(given_holdout) != len(HOLDOUT) * len(SEVERITIES):
        absent = [(c, s) for c in HOLDOUT for s in SEVERITIES if (c, s) not in table]
        raise ValueError(f"hold-out errors are all-or-none; missing {len(absent)}, e.g. {absent[:3]}")
    names = [c for c in ALL if any((c, s) in table for s in SEVERITIES)]
    per = {c: tuple(table[(c, s)] for s in SEVERITIES) for c in names}
    result = CorruptionResult(
        errors=per,
        mean_errors={c: sum(v) / len(v) for c, v in per.items()},
        mean_corruption_error=sum(sum(per[c]) for c in COMMON) / (len(COMMON) * len(SEVERITIES)),
        clean_error=clean_error,
    )
    if given_holdout:
        result.holdout_error = sum(sum(per[c]) for c in HOLDOUT) / (len(HOLDOUT) * len(SEVERITIES))
    if baseline is None:
        result.notes.append("no baseline: CE, mCE and relative mCE not computed")
        return result
    result.baseline = baseline.label
    result.ce = {c: corruption_error(per[c], baseline.errors[c]) for c in COMMON}
    result.mce = 100 * sum(result.ce.values()) / len(COMMON)
    if clean_error is not None:
        result.relative_ce = {c: relative_corruption_error(per[c], clean_error, baseline.errors[c],
                                                           baseline.clean_error) for c in COMMON}
        result.relative_mce = 100 * sum(result.relative_ce.values()) / len(COMMON)
    else:
        result.notes.append("no clean error: relative CE and relative mCE not computed")
    if given_holdout:
        result.holdout_ce = {c: result.mean_errors[c] / baseline.mean_errors[c] for c in HOLDOUT}
    return result


def _check_fraction(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be an error fraction in [0, 1]; got {value!r} (percentages: divide by 100)")


def _validate(errors: Mapping[tuple[str, int], float]) -> dict[tuple[str, int], float]:
    if not isinstance(errors, Mapping):
        raise TypeError(f"errors must map (corruption, severity) to an error; got {type(errors).__name__}")
    out = {}
    for key, value in errors.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"error keys must be (corruption, severity) pairs; got {key!r}")
        name, severity = key
        if name not in ALL:
            raise ValueError(f"unknown corruption {name!r} in errors; known corruptions: {', '.join(ALL)}")
        if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
            raise ValueError(f"severity must be an integer from 1 to 5; got {severity!r} for {name}")
        _check_fraction(value, f"error for ({name}, {severity})")
        out[(name, int(severity))] = float(value)
    return out
