"""CE, mCE, relative mCE, mean error and hold-out error against hand-worked numbers."""

from __future__ import annotations

import json

import pytest

from vision.corruptions import COMMON, HOLDOUT
from vision.metrics.corruption import (
    ALEXNET,
    ALEXNET_V1,
    corruption_error,
    relative_corruption_error,
    summarize_corruption_errors,
)

# EVALUATION.md A4: the published AlexNet severity means of the 15 benchmark corruptions.
PUBLISHED_MEANS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}


def everywhere(value: float, names=COMMON) -> dict[tuple[str, int], float]:
    return {(c, s): value for c in names for s in range(1, 6)}


def test_alexnet_table_reproduces_its_published_means():
    assert ALEXNET is ALEXNET_V1 and ALEXNET.label == "alexnet v1" and ALEXNET.clean_error == 0.4345
    assert tuple(ALEXNET.errors) == COMMON
    for name, mean in PUBLISHED_MEANS.items():
        assert len(ALEXNET.errors[name]) == 5
        assert abs(sum(ALEXNET.errors[name]) / 5 - mean) < 1e-12, name
        assert ALEXNET.mean_errors[name] == mean
    assert ALEXNET.mean_errors["speckle_noise"] == 0.845388 and ALEXNET.mean_errors["saturate"] == 0.658248


def test_alexnet_scores_100():
    errors = {(c, s): ALEXNET.errors[c][s - 1] for c in COMMON for s in range(1, 6)}
    result = summarize_corruption_errors(errors, clean_error=0.4345)
    assert result.mce == pytest.approx(100.0, abs=1e-12)
    assert result.relative_mce == pytest.approx(100.0, abs=1e-12)
    assert all(v == pytest.approx(1.0) for v in result.ce.values())


def test_hand_worked_constant_error_model():
    # Error 0.6 at every corruption and severity, clean error 0.2.
    #   CE(gaussian_noise)          = 5 * 0.6 / (5 * 0.886428)               = 0.676874
    #   relative CE(gaussian_noise) = 5 * (0.6 - 0.2) / (4.43214 - 5 * 0.4345) = 2.0 / 2.25964 = 0.885097
    # mCE and relative mCE are 100 x the means of the 15 such terms: 77.6071 and 130.0909.
    result = summarize_corruption_errors(everywhere(0.6), clean_error=0.2)
    assert result.ce["gaussian_noise"] == pytest.approx(0.676874, abs=1e-6)
    assert result.relative_ce["gaussian_noise"] == pytest.approx(0.885097, abs=1e-6)
    assert result.mce == pytest.approx(77.6071, abs=1e-4)
    assert result.relative_mce == pytest.approx(130.0909, abs=1e-4)
    assert result.mean_corruption_error == pytest.approx(0.6)
    assert result.mean_errors["fog"] == pytest.approx(0.6)
    assert result.holdout_error is None and result.holdout_ce is None and result.baseline == "alexnet v1"


def test_uniformly_better_model_has_relative_mce_100():
    # 10 points better than AlexNet everywhere, clean error included: the same degradation, so every
    # relative CE is exactly 1, while CE(c) = 1 - 0.1 / mean_A(c) (mCE 87.0655).
    errors = {(c, s): ALEXNET.errors[c][s - 1] - 0.1 for c in COMMON for s in range(1, 6)}
    result = summarize_corruption_errors(errors, clean_error=ALEXNET.clean_error - 0.1)
    assert result.relative_mce == pytest.approx(100.0, abs=1e-9)
    assert result.ce["brightness"] == pytest.approx(1 - 0.1 / 0.564592, abs=1e-12)
    assert result.mce == pytest.approx(87.0655, abs=1e-4)


def test_single_corruption_functions():
    assert corruption_error([0.2, 0.4], [0.5, 0.5]) == pytest.approx(0.6)
    assert relative_corruption_error([0.3, 0.5], 0.1, [0.6, 0.8], 0.2) == pytest.approx((0.2 + 0.4) / (0.4 + 0.6))
    with pytest.raises(ValueError, match="one error per severity"):
        corruption_error([0.2], [0.5, 0.5])


def test_holdout_reported_separately_and_mean_error_unnormalised():
    errors = everywhere(0.5)
    errors.update({(c, s): 0.1 * s for c in HOLDOUT for s in range(1, 6)})  # mean 0.3 each
    result = summarize_corruption_errors(errors, clean_error=0.25)
    assert result.mce == pytest.approx(summarize_corruption_errors(everywhere(0.5), 0.25).mce)  # not in mCE
    assert result.mean_corruption_error == pytest.approx(0.5)
    assert result.holdout_error == pytest.approx(0.3)
    assert result.holdout_ce["saturate"] == pytest.approx(0.3 / 0.658248)
    assert set(result.holdout_ce) == set(HOLDOUT) and len(result.errors) == 19
    json.dumps(result.to_dict())


def test_cifar_style_without_baseline_or_clean_error():
    result = summarize_corruption_errors(everywhere(0.27), baseline=None)
    assert result.mean_corruption_error == pytest.approx(0.27)
    assert result.mce is None and result.ce is None and result.relative_mce is None and result.baseline is None
    result = summarize_corruption_errors(everywhere(0.27))
    assert result.mce is not None and result.relative_mce is None
    assert any("clean error" in n for n in result.notes)


def test_bad_inputs_give_single_line_errors():
    full = everywhere(0.5)
    partial_holdout = {**full, ("spatter", 1): 0.4}
    cases = [
        ({k: v for k, v in full.items() if k != ("fog", 3)}, "missing 1 of the 75 benchmark errors, e.g. [('fog', 3)]"),
        (partial_holdout, "hold-out errors are all-or-none; missing 19"),
        ({**full, ("blizzard", 1): 0.5}, "unknown corruption 'blizzard'"),
        ({**full, ("fog", 6): 0.5}, "severity must be an integer from 1 to 5; got 6 for fog"),
        ({**full, ("fog", 0): 0.5}, "got 0 for fog"),
        ({**full, ("fog", 2): 43.2}, "got 43.2 (percentages: divide by 100)"),
        ({**full, "fog": 0.5}, "(corruption, severity) pairs; got 'fog'"),
    ]
    for errors, text in cases:
        with pytest.raises(ValueError) as info:
            summarize_corruption_errors(errors, clean_error=0.2)
        assert text in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="clean error must be an error fraction"):
        summarize_corruption_errors(full, clean_error=23.0)
