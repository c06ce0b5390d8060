"""The README's main job and the offline dataset loaders."""

import os

import numpy as np
import pytest

from keras_bayes import datasets


@pytest.mark.slow
def test_demo_prints_the_table(tmp_path, run_script, capsys):
    out = tmp_path / "demo.json"
    run_script(os.path.join("examples", "demo.py"), "--epochs", "3",
               "--samples", "4", "--json", out, "--plot", tmp_path / "rel.png",
               "--map", tmp_path / "map.png", "--map-epochs", "2")
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "accuracy" in line)
    rows = lines[header + 1:header + 4]
    assert [r.split("  ")[0].strip() for r in rows] == [
        "Adam", "SOBA, mean", "SOBA, 4-sample average"]
    for row in rows:
        acc, nll, ece, brier, auroc = map(float, row.split()[-5:])
        assert 0.2 < acc <= 1 and 0 < nll < 3 and 0 <= ece < 1
        assert 0 <= brier <= 2 and 0.5 < auroc <= 1
    assert (tmp_path / "rel.png").stat().st_size > 1000
    assert (tmp_path / "map.png").stat().st_size > 1000
    import json

    results = json.loads(out.read_text())["results"]
    assert {"accuracy", "nll", "ece", "brier", "auroc"} <= set(
        results["Adam"])


@pytest.mark.backend_independent
def test_mnist1d_is_generated_offline_and_deterministic():
    (x, y), (xt, yt) = datasets.load_mnist1d(num_samples=500)
    assert x.shape == (400, 40) and xt.shape == (100, 40)
    assert set(np.unique(y)) <= set(range(10))
    (x2, _), _ = datasets.load_mnist1d(num_samples=500)
    np.testing.assert_array_equal(x, x2)
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4


@pytest.mark.backend_independent
def test_digits_split():
    (x, y), (xt, yt) = datasets.load_digits(test_fraction=0.25)
    assert len(x) + len(xt) == 1797 and x.shape[1] == 64
    assert 0 <= x.min() and x.max() <= 1


@pytest.mark.slow
@pytest.mark.backend_independent
@pytest.mark.skipif(not os.path.exists(datasets.DEFAULT_CIFAR10_PATH),
                    reason="offline CIFAR-10 archive not beside the checkout")
def test_cifar10_offline_archive(tmp_path):
    (x, y), (xt, yt) = datasets.load_cifar10(
        train_size=200, test_size=100, seed=1, cache_dir=str(tmp_path))
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8
    assert xt.shape == (100, 32, 32, 3)
    assert np.bincount(y, minlength=10).tolist() == [20] * 10
    assert len(set(y[:20].tolist())) > 3  # shuffled, not class-sorted
    (x2, y2), _ = datasets.load_cifar10(
        train_size=200, test_size=100, seed=1, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(x, x2)


@pytest.mark.backend_independent
def test_missing_cifar10_archive_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="KERAS_BAYES_CIFAR10"):
        datasets.load_cifar10(path=str(tmp_path / "nope.npz.xz"))
