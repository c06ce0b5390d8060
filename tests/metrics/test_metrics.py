"""keras_bayes.metrics against independent references.

References: scikit-learn (AUROC, AP, ROC curve), SciPy (entropy, normal
distribution), deliberately naive loops (calibration bins, ECE, MCE, Brier)
and torchmetrics where installed. The streaming Keras metrics are checked
against the NumPy functions on every backend.
"""

import math
from fractions import Fraction

import keras
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve

from keras_bayes import metrics
from keras_bayes.metrics.calibration import bin_index


def random_probs(rng, n, k, concentration=1.0, dtype=np.float64):
    return rng.dirichlet(np.full(k, concentration), size=n).astype(dtype)


def random_case(seed, n=300, k=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, n, k, 0.5, dtype)
    # Labels agree with the prediction about half of the time.
    labels = np.where(rng.random(n) < 0.5, probs.argmax(1),
                      rng.integers(0, k, n))
    return labels, probs


# ----------------------------------------------------------------------------
# Naive oracles
# ----------------------------------------------------------------------------


def naive_edges(confidence, num_bins, binning, dtype):
    """Edges re-derived independently: b/B rounded to `dtype`, or quantiles
    c_(ceil(b·n/B)) with the ceiling taken in exact rational arithmetic."""
    if binning == "width":
        return [float(dtype(b / num_bins)) for b in range(num_bins + 1)]
    ordered = sorted(float(c) for c in confidence)
    n = len(ordered)
    inner = [ordered[math.ceil(Fraction(b * n, num_bins)) - 1]
             for b in range(1, num_bins)]
    return [0.0] + inner + [1.0]


def naive_bins(labels, probs, num_bins, binning="width"):
    """One loop over bins, one over examples: the oracle for the binning."""
    dtype = probs.dtype.type
    confidence = [float(row.max()) for row in probs]
    correct = [float(int(np.argmax(row)) == int(y))
               for row, y in zip(probs, labels)]
    edges = naive_edges(confidence, num_bins, binning, dtype)
    counts, accs, confs = [], [], []
    for b in range(num_bins):
        lower, upper = edges[b], edges[b + 1]
        members = [
            i for i, c in enumerate(confidence)
            if (b == 0 or c > lower) and (b == num_bins - 1 or c <= upper)
        ]
        counts.append(len(members))
        accs.append(np.mean([correct[i] for i in members]) if members else 0)
        confs.append(np.mean([confidence[i] for i in members])
                     if members else 0)
    return np.array(counts, float), np.array(accs), np.array(confs)


def naive_ece_mce(labels, probs, num_bins, binning="width"):
    counts, accs, confs = naive_bins(labels, probs, num_bins, binning)
    n = counts.sum()
    ece = sum(c / n * abs(a - f) for c, a, f in zip(counts, accs, confs))
    mce = max(abs(a - f) for c, a, f in zip(counts, accs, confs) if c > 0)
    return ece, mce


def two_class(confidences, dtype=np.float64):
    c = np.asarray(confidences, dtype=dtype)
    return np.stack([c, 1 - c], axis=1)


# ----------------------------------------------------------------------------
# Calibration: ECE, MCE, bins
# ----------------------------------------------------------------------------


# The suite's autouse fixture clears the Keras session around every test
# (a few tenths of a second), so cases are looped inside a few tests rather
# than parametrized.


@pytest.mark.backend_independent
@pytest.mark.parametrize("binning", ["width", "mass"])
def test_bins_ece_mce_match_naive_loop(binning):
    for num_bins in (1, 2, 10, 15, 40):
        for dtype in (np.float64, np.float32):
            check_against_naive_loop(binning, num_bins, dtype)


def check_against_naive_loop(binning, num_bins, dtype):
    labels, probs = random_case(num_bins, n=157, k=4, dtype=dtype)
    bins = metrics.calibration_bins(labels, probs, num_bins, binning)
    counts, accs, confs = naive_bins(labels, probs, num_bins, binning)
    np.testing.assert_array_equal(bins["counts"], counts)
    np.testing.assert_allclose(bins["accuracy"], accs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bins["confidence"], confs, rtol=0, atol=1e-12)
    assert bins["edges"].shape == (num_bins + 1,)
    assert np.all(np.diff(bins["edges"]) >= 0)
    ece, mce = naive_ece_mce(labels, probs, num_bins, binning)
    assert metrics.expected_calibration_error(
        labels, probs, num_bins, binning) == pytest.approx(ece, abs=1e-12)
    assert metrics.maximum_calibration_error(
        labels, probs, num_bins, binning) == pytest.approx(mce, abs=1e-12)


@pytest.mark.backend_independent
def test_confidence_exactly_on_an_edge_goes_to_the_lower_bin():
    for num_bins in (2, 10, 15):
        on_edges = [b / num_bins for b in range(1, num_bins + 1)]
        on_edges = [c for c in on_edges if c >= 0.5]  # valid 2-class rows
        for dtype in (np.float64, np.float32):
            probs = two_class(on_edges, dtype)
            bins = metrics.calibration_bins(
                np.zeros(len(on_edges)), probs, num_bins)
            expected = np.zeros(num_bins)
            for c in on_edges:
                expected[round(c * num_bins) - 1] += 1
            np.testing.assert_array_equal(bins["counts"], expected)
    # Confidence 1 is in the last bin, 0 (only via the helper, a valid row
    # cannot have it) in the first.
    edges = np.linspace(0, 1, 11)
    assert list(bin_index([0.0, 1e-9, 0.1, 0.1000001, 1.0], edges)) == [
        0, 0, 0, 1, 9]


@pytest.mark.backend_independent
def test_comparison_is_made_in_the_precision_of_probs():
    # float32(0.6) = 0.6000000238...: on edge in float32, above 0.6 in
    # float64. The same number in a float64 array is in the next bin.
    probs32 = two_class([0.6], np.float32)
    bins32 = metrics.calibration_bins([0], probs32, 10)
    bins64 = metrics.calibration_bins([0], probs32.astype(np.float64), 10)
    assert np.flatnonzero(bins32["counts"]).tolist() == [5]
    assert np.flatnonzero(bins64["counts"]).tolist() == [6]


@pytest.mark.backend_independent
def test_all_confidences_one_and_perfect_calibration():
    probs = np.tile([1.0, 0.0, 0.0], (20, 1))
    bins = metrics.calibration_bins(np.zeros(20), probs, 15)
    assert bins["counts"][-1] == 20 and bins["counts"][:-1].sum() == 0
    assert metrics.expected_calibration_error(np.zeros(20), probs) == 0.0
    assert metrics.expected_calibration_error(np.ones(20), probs) == 1.0
    assert metrics.maximum_calibration_error(np.ones(20), probs) == 1.0


@pytest.mark.backend_independent
def test_empty_bins_are_zero_and_skipped():
    labels = np.array([0, 1, 0])
    probs = two_class([0.55, 0.95, 0.95])
    bins = metrics.calibration_bins(labels, probs, 10)
    filled = bins["counts"] > 0
    assert filled.sum() == 2
    assert np.all(bins["accuracy"][~filled] == 0)
    assert np.all(bins["confidence"][~filled] == 0)
    # Bin (0.5, 0.6]: acc 1, conf 0.55; bin (0.9, 1]: acc 0.5, conf 0.95.
    assert metrics.expected_calibration_error(labels, probs, 10) == (
        pytest.approx(1 / 3 * 0.45 + 2 / 3 * 0.45))
    assert metrics.maximum_calibration_error(labels, probs, 10) == (
        pytest.approx(0.45))


@pytest.mark.backend_independent
def test_equal_mass_bins_have_equal_counts_for_distinct_confidences():
    rng = np.random.default_rng(3)
    for n, num_bins in [(100, 10), (101, 10), (7, 3), (3, 5), (50, 50)]:
        probs = random_probs(rng, n, 3)
        bins = metrics.calibration_bins(
            np.zeros(n), probs, num_bins, binning="mass")
        ranks = [math.ceil(Fraction(b * n, num_bins))
                 for b in range(num_bins + 1)]
        np.testing.assert_array_equal(bins["counts"], np.diff(ranks))


@pytest.mark.backend_independent
def test_equal_mass_never_splits_ties_and_ignores_order():
    confidences = [0.9] * 7 + [0.6] * 2 + [0.7, 0.8, 0.95]
    probs = two_class(confidences)
    labels = np.arange(len(confidences)) % 2
    bins = metrics.calibration_bins(labels, probs, 4, binning="mass")
    counts, _, _ = naive_bins(labels, probs, 4, "mass")
    np.testing.assert_array_equal(bins["counts"], counts)
    # All seven 0.9s share one bin, which therefore holds more than n/B.
    index = bin_index(probs.max(1), bins["edges"])
    assert len(set(index[:7].tolist())) == 1
    assert bins["counts"].max() >= 7
    order = np.random.default_rng(0).permutation(len(labels))
    again = metrics.calibration_bins(labels[order], probs[order], 4, "mass")
    for key in bins:
        np.testing.assert_array_equal(bins[key], again[key])
    # Every confidence equal: one bin holds everything.
    same = metrics.calibration_bins([0] * 6, two_class([0.7] * 6), 3, "mass")
    np.testing.assert_array_equal(same["counts"], [6, 0, 0])


@pytest.mark.backend_independent
def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    classification = pytest.importorskip("torchmetrics.classification")
    labels, probs = random_case(11, n=400, k=6)
    for norm, ours in (("l1", metrics.expected_calibration_error),
                       ("max", metrics.maximum_calibration_error)):
        reference = classification.MulticlassCalibrationError(
            num_classes=6, n_bins=15, norm=norm)
        value = reference(torch.tensor(probs), torch.tensor(labels))
        assert ours(labels, probs, 15) == pytest.approx(float(value),
                                                        abs=1e-6)


@pytest.mark.backend_independent
def test_brier_accuracy_nll_against_explicit_formulas():
    labels, probs = random_case(5, n=60, k=3)
    brier = np.mean([sum((probs[i, j] - (j == labels[i])) ** 2
                         for j in range(3)) for i in range(60)])
    assert metrics.brier_score(labels, probs) == pytest.approx(brier)
    assert metrics.accuracy(labels, probs) == pytest.approx(
        np.mean(probs.argmax(1) == labels))
    assert metrics.negative_log_likelihood(labels, probs) == pytest.approx(
        -np.mean(np.log(probs[np.arange(60), labels])))
    report = metrics.classification_report(labels, probs)
    assert set(report) == {"accuracy", "nll", "ece", "brier"}


# ----------------------------------------------------------------------------
# Entropy and mutual information
# ----------------------------------------------------------------------------


@pytest.mark.backend_independent
def test_predictive_entropy_matches_scipy_and_handles_zeros():
    rng = np.random.default_rng(0)
    probs = random_probs(rng, 50, 4)
    probs[:5] = [1.0, 0.0, 0.0, 0.0]
    with np.errstate(all="raise"):
        ours = metrics.predictive_entropy(probs)
    np.testing.assert_allclose(ours, stats.entropy(probs, axis=1), atol=1e-12)
    assert np.all(ours[:5] == 0)
    uniform = metrics.predictive_entropy(np.full((2, 4), 0.25))
    np.testing.assert_allclose(uniform, np.log(4))


@pytest.mark.backend_independent
def test_uncertainty_decomposition_against_a_loop():
    rng = np.random.default_rng(1)
    samples = random_probs(rng, 6 * 20, 5).reshape(6, 20, 5)
    out = metrics.uncertainty_decomposition(samples)
    for i in range(20):
        mean = samples[:, i].mean(0)
        total = stats.entropy(mean)
        expected = np.mean([stats.entropy(samples[s, i]) for s in range(6)])
        assert out["total_entropy"][i] == pytest.approx(total, abs=1e-12)
        assert out["expected_entropy"][i] == pytest.approx(expected,
                                                           abs=1e-12)
        assert out["mutual_information"][i] == pytest.approx(
            total - expected, abs=1e-12)
    assert np.all(out["mutual_information"] >= 0)
    np.testing.assert_array_equal(metrics.mutual_information(samples),
                                  out["mutual_information"])
    np.testing.assert_allclose(metrics.predictive_entropy(samples),
                               out["total_entropy"])


@pytest.mark.backend_independent
def test_mutual_information_is_zero_when_samples_agree():
    rng = np.random.default_rng(2)
    one = random_probs(rng, 10, 3)
    for samples in (one[None], np.repeat(one[None], 4, axis=0)):
        mi = metrics.mutual_information(samples)
        np.testing.assert_allclose(mi, 0.0, atol=1e-12)
        assert np.all(mi >= 0)


# ----------------------------------------------------------------------------
# AUROC, AP, FPR@95%TPR against scikit-learn
# ----------------------------------------------------------------------------


def sklearn_fpr_at_tpr(targets, scores, level=0.95):
    fpr, tpr, _ = roc_curve(targets, scores, drop_intermediate=False)
    return fpr[tpr >= level].min()


def ranking_cases():
    rng = np.random.default_rng(7)
    yield "random", rng.random(200) < 0.3, rng.normal(size=200)
    # Heavy ties: 3 distinct scores.
    yield "ties", rng.random(150) < 0.5, rng.integers(0, 3, 150) * 1.0
    # Ties within and across classes, 20 positives (TPR hits 0.95 exactly).
    targets = np.array([1] * 20 + [0] * 30)
    scores = np.concatenate([np.repeat([3.0, 2.0, 1.0, 0.0], 5),
                             np.repeat([2.0, 1.0, 0.0], 10)])
    yield "tpr_exactly_095", targets, scores
    yield "all_tied", rng.random(40) < 0.4, np.zeros(40)
    yield "separable", np.r_[np.ones(10), np.zeros(10)], np.r_[
        np.arange(10) + 10.0, np.arange(10)]
    yield "reversed", np.r_[np.zeros(10), np.ones(10)], np.arange(20.0)[::-1]
    yield "one_positive", np.eye(1, 30, 17)[0], rng.normal(size=30).round(1)


@pytest.mark.backend_independent
def test_ranking_metrics_match_sklearn():
    for _, targets, scores in ranking_cases():
        check_ranking_against_sklearn(targets, scores)


def check_ranking_against_sklearn(targets, scores):
    assert metrics.auroc(targets, scores) == pytest.approx(
        roc_auc_score(targets, scores), abs=1e-12)
    assert metrics.average_precision(targets, scores) == pytest.approx(
        average_precision_score(targets, scores), abs=1e-12)
    for level in (0.95, 0.5, 1.0):
        assert metrics.fpr_at_tpr(targets, scores, level) == pytest.approx(
            sklearn_fpr_at_tpr(targets, scores, level), abs=1e-12)


@pytest.mark.backend_independent
def test_fpr_at_tpr_uses_every_threshold_not_the_thinned_curve():
    # Collinear ROC points that roc_curve(drop_intermediate=True) would
    # drop still count: TPR reaches 0.95 mid-diagonal.
    targets = np.array([1] * 20 + [0] * 20)
    scores = np.concatenate([np.arange(20, 0, -1.0), np.arange(19, -1, -1.0)])
    assert metrics.fpr_at_tpr(targets, scores) == pytest.approx(
        sklearn_fpr_at_tpr(targets, scores))


@pytest.mark.backend_independent
def test_ranking_metrics_undefined_with_one_class():
    for targets in (np.ones(5), np.zeros(5)):
        for fn in (metrics.auroc, metrics.average_precision,
                   metrics.fpr_at_tpr):
            with pytest.raises(ValueError, match="`targets` must contain"):
                fn(targets, np.arange(5.0))


# ----------------------------------------------------------------------------
# Misclassification and OOD detection
# ----------------------------------------------------------------------------


@pytest.mark.backend_independent
def test_misclassification_detection_matches_sklearn():
    for score in ("max_prob", "entropy"):
        check_misclassification_against_sklearn(score)


def check_misclassification_against_sklearn(score):
    labels, probs = random_case(21, n=250, k=4)
    out = metrics.misclassification_detection(labels, probs, score=score)
    correct = probs.argmax(1) == labels
    confidence = (probs.max(1) if score == "max_prob"
                  else -stats.entropy(probs, axis=1))
    assert out["score"] == score
    assert out["accuracy"] == pytest.approx(correct.mean())
    assert out["auroc"] == pytest.approx(roc_auc_score(correct, confidence),
                                         abs=1e-12)
    assert out["aupr_correct"] == pytest.approx(
        average_precision_score(correct, confidence), abs=1e-12)
    assert out["aupr_error"] == pytest.approx(
        average_precision_score(~correct, -confidence), abs=1e-12)
    assert out["fpr_at_95_tpr"] == pytest.approx(
        sklearn_fpr_at_tpr(correct, confidence), abs=1e-12)


@pytest.mark.backend_independent
def test_misclassification_detection_with_ties_and_samples():
    rng = np.random.default_rng(4)
    # Confidences drawn from 3 values: many ties.
    confidence = rng.choice([0.5, 0.7, 0.9], size=80)
    probs = two_class(confidence)
    labels = (rng.random(80) < 0.4).astype(int)
    out = metrics.misclassification_detection(labels, probs)
    correct = labels == 0
    assert out["auroc"] == pytest.approx(roc_auc_score(correct, confidence))
    samples = random_probs(rng, 5 * 80, 3).reshape(5, 80, 3)
    labels = rng.integers(0, 3, 80)
    out = metrics.misclassification_detection(labels, samples,
                                              "mutual_information")
    mi = metrics.mutual_information(samples)
    correct = samples.mean(0).argmax(1) == labels
    assert out["auroc"] == pytest.approx(roc_auc_score(correct, -mi))


@pytest.mark.backend_independent
def test_misclassification_detection_all_correct_or_all_wrong_is_nan():
    probs = two_class([0.9, 0.8, 0.7])
    for labels, acc in (([0, 0, 0], 1.0), ([1, 1, 1], 0.0)):
        out = metrics.misclassification_detection(labels, probs)
        assert out["accuracy"] == acc
        for key in ("auroc", "aupr_correct", "aupr_error", "fpr_at_95_tpr"):
            assert math.isnan(out[key])


@pytest.mark.backend_independent
def test_ood_detection_matches_sklearn():
    for score in ("entropy", "max_prob", "mutual_information"):
        check_ood_against_sklearn(score)


def check_ood_against_sklearn(score):
    rng = np.random.default_rng(9)
    samples_in = random_probs(rng, 4 * 120, 5, 0.3).reshape(4, 120, 5)
    samples_out = random_probs(rng, 4 * 70, 5, 2.0).reshape(4, 70, 5)
    out = metrics.ood_detection(samples_in, samples_out, score=score)
    mean = np.concatenate([samples_in.mean(0), samples_out.mean(0)])
    if score == "entropy":
        uncertainty = stats.entropy(mean, axis=1)
    elif score == "max_prob":
        uncertainty = 1 - mean.max(1)
    else:
        both = np.concatenate([samples_in, samples_out], axis=1)
        uncertainty = stats.entropy(mean, axis=1) - np.mean(
            stats.entropy(both, axis=2), axis=0)
    is_ood = np.r_[np.zeros(120), np.ones(70)].astype(bool)
    assert out["score"] == score
    assert out["auroc"] == pytest.approx(
        roc_auc_score(is_ood, uncertainty), abs=1e-9)
    assert out["aupr_out"] == pytest.approx(
        average_precision_score(is_ood, uncertainty), abs=1e-9)
    assert out["aupr_in"] == pytest.approx(
        average_precision_score(~is_ood, -uncertainty), abs=1e-9)
    assert out["fpr_at_95_tpr"] == pytest.approx(
        sklearn_fpr_at_tpr(is_ood, uncertainty), abs=1e-9)
    if score != "mutual_information":  # 2-D input gives the same answer
        again = metrics.ood_detection(samples_in.mean(0), samples_out.mean(0),
                                      score=score)
        assert again == pytest.approx(out)


@pytest.mark.backend_independent
def test_ood_detection_with_identical_predictions_is_chance():
    probs = two_class([0.6, 0.9, 0.6, 0.9])
    out = metrics.ood_detection(probs, probs)
    assert out["auroc"] == 0.5
    assert out["fpr_at_95_tpr"] == 1.0
    assert out["aupr_out"] == pytest.approx(0.5)


@pytest.mark.backend_independent
def test_ood_detection_bad_input():
    probs = two_class([0.6, 0.9])
    with pytest.raises(ValueError, match="`probs_out` is empty"):
        metrics.ood_detection(probs, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="`probs_in` is empty"):
        metrics.ood_detection(np.zeros((0, 2)), probs)
    with pytest.raises(ValueError, match="needs per-sample"):
        metrics.ood_detection(probs, probs, score="mutual_information")
    with pytest.raises(ValueError, match="same number of classes"):
        metrics.ood_detection(probs, np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="`score` must be one of"):
        metrics.ood_detection(probs, probs, score="energy")


# ----------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------


@pytest.mark.backend_independent
def test_gaussian_nll_and_coverage_match_scipy():
    rng = np.random.default_rng(12)
    mean = rng.normal(size=(300, 2))
    var = rng.uniform(0.2, 3.0, size=(300, 2))
    targets = mean + rng.normal(size=(300, 2)) * np.sqrt(var) * 1.3
    expected_nll = -np.mean(stats.norm.logpdf(targets, mean, np.sqrt(var)))
    assert metrics.gaussian_nll(targets, mean, var) == pytest.approx(
        expected_nll, rel=1e-12)
    for level in (0.5, 0.9, 0.95):
        z = stats.norm.ppf(0.5 + level / 2)
        expected = np.mean(np.abs(targets - mean) <= z * np.sqrt(var))
        assert metrics.interval_coverage(targets, mean, var, level) == (
            pytest.approx(expected))
    # Inside / outside the 95% interval of N(0, 1): |y| <= 1.959964.
    assert metrics.interval_coverage([0, 1.95, 1.97, -2.5], [0] * 4,
                                     [1] * 4) == 0.5


REGRESSION_BAD_INPUT = [
    (([1.0], [0.0], [0.0]), "`var` must be > 0"),
    (([1.0], [0.0], [-1.0]), "`var` must be > 0"),
    (([1.0, 2.0], [0.0], [1.0]), "`mean` must have the shape"),
    (([1.0], [0.0], [1.0, 1.0]), "`var` must have the shape"),
    (([np.nan], [0.0], [1.0]), "`targets` contains NaN"),
    (([1.0], [np.inf], [1.0]), "`mean` contains NaN or infinite"),
    (([], [], []), "`targets` is empty"),
]


@pytest.mark.backend_independent
def test_regression_bad_input():
    for args, message in REGRESSION_BAD_INPUT:
        for fn in (metrics.gaussian_nll, metrics.interval_coverage):
            with pytest.raises(ValueError, match=message):
                fn(*args)
    for level in (0, 1, 1.5, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="`level` must be in"):
            metrics.interval_coverage([0.0], [0.0], [1.0], level)


# ----------------------------------------------------------------------------
# Validation of classification inputs
# ----------------------------------------------------------------------------

GOOD_PROBS = two_class([0.7, 0.6, 0.9])
GOOD_LABELS = np.array([0, 1, 0])


CLASSIFICATION_BAD_INPUT = [
    ([0, 1], GOOD_PROBS, "`labels` and the probabilities must have"),
    ([0, 2, 0], GOOD_PROBS, r"`labels` must be integers in \[0, 1\]"),
    ([0, -1, 0], GOOD_PROBS, r"`labels` must be integers in"),
    ([0, 0.5, 0], GOOD_PROBS, "`labels` must hold integers"),
    ([0, np.nan, 0], GOOD_PROBS, "`labels` must hold integers"),
    (["a", "b", "c"], GOOD_PROBS, "`labels` must hold integer"),
    (GOOD_LABELS, GOOD_PROBS * 0.9, "`probs` rows must sum to 1"),
    (GOOD_LABELS, GOOD_PROBS + 0.01, "`probs` rows must sum to 1"),
    (GOOD_LABELS, np.where(GOOD_PROBS == 0.7, np.nan, GOOD_PROBS),
     "`probs` contains NaN or infinite"),
    (GOOD_LABELS, np.where(GOOD_PROBS == 0.7, np.inf, GOOD_PROBS),
     "`probs` contains NaN or infinite"),
    (GOOD_LABELS, [[1.2, -0.2], [1, 0], [1, 0]], "`probs` contains neg"),
    (GOOD_LABELS, GOOD_PROBS[:, 0], r"`probs` must have shape"),
    ([], np.zeros((0, 2)), "`probs` is empty"),
]


@pytest.mark.backend_independent
def test_classification_bad_input():
    for labels, probs, message in CLASSIFICATION_BAD_INPUT:
        for fn in (metrics.accuracy, metrics.negative_log_likelihood,
                   metrics.brier_score, metrics.calibration_bins,
                   metrics.expected_calibration_error,
                   metrics.maximum_calibration_error,
                   metrics.classification_report,
                   metrics.misclassification_detection):
            with pytest.raises(ValueError, match=message):
                fn(labels, probs)


@pytest.mark.backend_independent
def test_probabilities_within_tolerance_are_used_as_given():
    # Rows summing to 1.0005 pass unchanged; a confidence above 1 is in
    # the last bin.
    probs = two_class([1.0, 0.6, 0.9]) * (1 + 5e-4)
    bins = metrics.calibration_bins(GOOD_LABELS, probs, 10)
    assert bins["counts"][-1] == 2
    assert bins["confidence"][-1] == pytest.approx(1.9 / 2 * (1 + 5e-4))


@pytest.mark.backend_independent
def test_bad_num_bins():
    message = "`num_bins` must be an integer"
    for num_bins in (0, -3, 2.5, True, "10", None):
        for binning in ("width", "mass"):
            with pytest.raises(ValueError, match=message):
                metrics.expected_calibration_error(GOOD_LABELS, GOOD_PROBS,
                                                   num_bins, binning)
        with pytest.raises(ValueError, match=message):
            metrics.ExpectedCalibrationError(num_bins=num_bins)


@pytest.mark.backend_independent
def test_numpy_integer_num_bins_and_bad_binning():
    assert metrics.expected_calibration_error(
        GOOD_LABELS, GOOD_PROBS, np.int64(4)) == (
            metrics.expected_calibration_error(GOOD_LABELS, GOOD_PROBS, 4))
    with pytest.raises(ValueError, match="`binning` must be one of"):
        metrics.calibration_bins(GOOD_LABELS, GOOD_PROBS, 10, "quantile")


@pytest.mark.backend_independent
def test_bad_samples_and_scores():
    with pytest.raises(ValueError, match="`sample_probs` must hold at least "
                                         "one sample"):
        metrics.uncertainty_decomposition(np.zeros((0, 3, 2)))
    with pytest.raises(ValueError, match=r"`sample_probs` must have shape"):
        metrics.uncertainty_decomposition(GOOD_PROBS)
    with pytest.raises(ValueError, match="`sample_probs` rows must sum"):
        metrics.mutual_information(np.full((2, 3, 2), 0.4))
    with pytest.raises(ValueError, match="`score` must be one of"):
        metrics.misclassification_detection(GOOD_LABELS, GOOD_PROBS, "odin")
    with pytest.raises(ValueError, match="needs per-sample"):
        metrics.misclassification_detection(GOOD_LABELS, GOOD_PROBS,
                                            "mutual_information")
    with pytest.raises(ValueError, match="`targets` must hold only 0/1"):
        metrics.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`scores` contains NaN"):
        metrics.auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="`scores` and `targets` must have"):
        metrics.average_precision([0, 1, 1], [0.1, 0.3])
    with pytest.raises(ValueError, match="`targets` is empty"):
        metrics.auroc([], [])
    with pytest.raises(ValueError, match=r"`tpr` must be in \(0, 1\]"):
        metrics.fpr_at_tpr([0, 1], [0.1, 0.3], tpr=0.0)


# ----------------------------------------------------------------------------
# Streaming Keras metrics
# ----------------------------------------------------------------------------


def feed(metric, labels, values, splits, weights=None):
    for part in np.array_split(np.arange(len(labels)), splits):
        metric.update_state(
            labels[part], values[part],
            None if weights is None else weights[part])
    return float(keras.ops.convert_to_numpy(metric.result()))


def edge_heavy_case(num_bins, seed=0):
    """float32 probabilities, a third of them with confidence on an edge."""
    labels, probs = random_case(seed, n=240, k=3, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.choice(240, 80, replace=False)
    confidence = np.float32(rng.integers(num_bins // 2 + 1, num_bins + 1, 80)
                            / num_bins)
    probs[rows] = 0
    probs[rows, 0] = confidence
    probs[rows, 1] = 1 - confidence
    return labels, probs


def test_streaming_ece_equals_numpy_in_batches():
    for num_bins in (1, 10, 15):
        labels, probs = edge_heavy_case(num_bins)
        metric = metrics.ExpectedCalibrationError(num_bins=num_bins)
        value = feed(metric, labels, probs, splits=5)
        bins = metrics.calibration_bins(labels, probs, num_bins)
        counts = keras.ops.convert_to_numpy(metric.bin_counts)
        np.testing.assert_array_equal(counts, bins["counts"])
        assert value == pytest.approx(
            metrics.expected_calibration_error(labels, probs, num_bins),
            abs=2e-6)


def test_streaming_ece_from_logits_one_hot_weights_and_reset():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(90, 4)).astype("float32") * 3
    labels = rng.integers(0, 4, 90)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    expected = metrics.expected_calibration_error(labels, probs, 15)

    metric = metrics.ExpectedCalibrationError(num_bins=15, from_logits=True)
    assert feed(metric, labels, logits, 3) == pytest.approx(expected,
                                                            abs=2e-6)
    metric.reset_state()
    assert float(keras.ops.convert_to_numpy(metric.result())) == 0.0
    # One-hot and (n, 1) labels give the same answer.
    onehot = np.eye(4, dtype="float32")[labels]
    assert feed(metric, onehot, logits, 4) == pytest.approx(expected,
                                                            abs=2e-6)
    metric.reset_state()
    assert feed(metric, labels[:, None], logits, 2) == pytest.approx(
        expected, abs=2e-6)

    # Integer sample weights act like repeated examples.
    weights = rng.integers(0, 4, 90)
    metric.reset_state()
    weighted = feed(metric, labels, logits, 3, weights.astype("float32"))
    assert weighted == pytest.approx(metrics.expected_calibration_error(
        np.repeat(labels, weights), np.repeat(probs, weights, axis=0), 15),
        abs=2e-6)


def test_streaming_metrics_in_compile_and_evaluate():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(96, 5)).astype("float32")
    y = rng.integers(0, 3, 96)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(3, activation="softmax",
                           kernel_initializer=keras.initializers.RandomNormal(
                               stddev=2.0, seed=1)),
    ])
    model.compile(loss="sparse_categorical_crossentropy", metrics=[
        metrics.ExpectedCalibrationError(num_bins=10),
        metrics.BrierScore(),
    ])
    result = model.evaluate(x, y, batch_size=20, verbose=0,
                            return_dict=True)
    probs = model.predict(x, batch_size=96, verbose=0)
    assert result["ece"] == pytest.approx(
        metrics.expected_calibration_error(y, probs, 10), abs=1e-5)
    assert result["brier"] == pytest.approx(metrics.brier_score(y, probs),
                                            abs=1e-5)


def test_streaming_brier_equals_numpy():
    labels, probs = random_case(8, n=70, k=5, dtype=np.float32)
    metric = metrics.BrierScore()
    assert feed(metric, labels, probs, 3) == pytest.approx(
        metrics.brier_score(labels, probs), abs=1e-6)
    metric.reset_state()
    assert feed(metric, np.eye(5)[labels], probs, 2) == pytest.approx(
        metrics.brier_score(labels, probs), abs=1e-6)


def test_streaming_config_round_trip():
    metric = metrics.ExpectedCalibrationError(num_bins=7, from_logits=True,
                                              name="my_ece")
    config = metric.get_config()
    assert config["num_bins"] == 7 and config["from_logits"] is True
    clone = metrics.ExpectedCalibrationError.from_config(config)
    assert (clone.num_bins, clone.from_logits, clone.name) == (7, True,
                                                               "my_ece")
    serialized = keras.saving.serialize_keras_object(metric)
    assert keras.saving.get_registered_name(
        metrics.ExpectedCalibrationError) == (
            "keras_bayes>ExpectedCalibrationError")
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, metrics.ExpectedCalibrationError)
    assert restored.num_bins == 7
    brier = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metrics.BrierScore(True)))
    assert isinstance(brier, metrics.BrierScore) and brier.from_logits


def test_streaming_bad_shapes():
    metric = metrics.ExpectedCalibrationError()
    with pytest.raises(ValueError, match="`y_pred` must have a class axis"):
        metric.update_state(np.zeros(4), np.ones((4, 1), "float32"))
    with pytest.raises(ValueError, match="`y_true` must be integer labels"):
        metric.update_state(np.zeros((4, 2, 2)), np.ones((4, 3), "float32"))
