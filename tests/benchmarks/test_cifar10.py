"""The CIFAR-10 benchmark harness (`python benchmarks/cifar10.py`) in its
small setting, its data pipeline and the ResNet-20 models."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from benchmarks import cifar10 as bench
from keras_bayes import models
from keras_bayes.datasets import DEFAULT_CIFAR10_PATH

HAS_ARCHIVE = os.path.exists(DEFAULT_CIFAR10_PATH)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ARCHIVE, reason="offline CIFAR-10 archive "
                    "not beside the checkout")
def test_small_run_writes_results_and_resumes(tmp_path):
    out = str(tmp_path / "cifar10")
    argv = ["--methods", "sgd,soba,bsam", "--model", "cnn", "--epochs", "1",
            "--subset", "200", "--test-subset", "100", "--test-samples", "2",
            "--heldout-classes", "9", "--out", out, "--verbose", "0"]
    payload = bench.main(argv)
    records = payload["records"]
    assert [r["method"] for r in records] == ["sgd", "soba", "bsam"]
    for record in records:
        assert record["train_size"] == 180  # class 9 held out
        assert record["seconds_per_epoch"] > 0
        assert record["peak_memory_mb"] > 0
        blocks = [record["mean"]] + ([record["bma"]] if record["bma"]
                                     else [])
        for block in blocks:
            assert 0.0 <= block["accuracy"] <= 1.0
            assert block["nll"] > 0 and 0.0 <= block["ece"] <= 1.0
            assert 0.0 <= block["ood_auroc"] <= 1.0
    assert records[0]["bma"] is None          # SGD has no posterior
    assert records[1]["bma"] is not None      # SOBA has one
    saved = json.loads(open(out + ".json").read())
    assert len(saved["records"]) == 3 and saved["small"]
    table = open(out + ".md").read()
    assert "| soba | 2-sample average |" in table
    assert "smoke run, not a reproduction" in table
    # Finished runs leave no backup and are skipped when run again.
    assert not os.listdir(out + "_backup")
    again = bench.main(argv)
    assert len(again["records"]) == 3


def test_warmup_cosine_schedule():
    schedule = bench.warmup_cosine_by_epochs(0.2, steps_per_epoch=10,
                                             epochs=40)
    values = [float(keras.ops.convert_to_numpy(schedule(s)))
              for s in (0, 25, 50, 225, 399)]
    assert values[0] == pytest.approx(0.0)
    assert values[1] == pytest.approx(0.1, rel=1e-5)   # half-way warmup
    assert values[2] == pytest.approx(0.2, rel=1e-5)   # the peak
    assert values[3] == pytest.approx(0.1, rel=1e-3)   # half-way cosine
    assert values[4] < 1e-4


@pytest.mark.backend_independent
def test_augmented_batches_are_crops_and_flips():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 32, 32, 3)).astype("float32")
    y = np.arange(10)
    batches = bench.AugmentedBatches(x, y, batch_size=4, seed=0)
    assert len(batches) == 3
    seen = []
    for index in range(len(batches)):
        xb, yb = batches[index]
        seen += list(yb)
        for image, label in zip(xb, yb):
            padded = np.pad(x[label], ((4, 4), (4, 4), (0, 0)))
            found = any(
                np.array_equal(image, crop) or np.array_equal(
                    image, crop[:, ::-1])
                for top in range(9) for left in range(9)
                for crop in [padded[top:top + 32, left:left + 32]])
            assert found
    assert sorted(seen) == list(range(10))
    plain = bench.AugmentedBatches(x, y, 4, seed=0, augment=False)
    xb, yb = plain[0]
    np.testing.assert_array_equal(xb, x[yb])


@pytest.mark.parametrize("normalization", ["frn", "batchnorm"])
def test_resnet20(normalization):
    model = models.resnet20(num_classes=10, normalization=normalization)
    assert 0.26e6 < model.count_params() < 0.28e6
    names = {type(layer).__name__ for layer in model.layers}
    if normalization == "frn":
        assert "BatchNormalization" not in names
        assert "FilterResponseNormalization" in names
    else:
        assert "FilterResponseNormalization" not in names
    out = model(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(out.shape) == (2, 10)
    with pytest.raises(ValueError, match="normalization"):
        models.resnet20(normalization="layernorm")


@pytest.mark.backend_independent
def test_bad_arguments():
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "sgd,vogn-typo"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--epochs", "0"])
    with pytest.raises(ValueError, match="data"):
        bench.load_data("internet")
    with pytest.raises(ValueError, match="model"):
        bench.build_model("vgg", 10)


TFDS_SCRIPT = """
import tensorflow_datasets as tfds
from benchmarks import cifar10 as bench
with tfds.testing.mock_data(num_examples=200):
    (x, y), (xt, yt), x_ood = bench.load_data("tfds", heldout_classes=(9,))
assert x.shape[1:] == (32, 32, 3) and x.dtype.name == "float32"
assert y.max() <= 8 and len(x_ood) + len(xt) == 200
print("ok")
"""


# The TFDS path is backend-independent NumPy: checked once.
@pytest.mark.slow
@pytest.mark.backend_independent
def test_tfds_path_with_mock_data():
    pytest.importorskip("tensorflow_datasets")
    result = subprocess.run([sys.executable, "-c", TFDS_SCRIPT], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, (
        result.stderr[-3000:])


@pytest.mark.backend_independent
def test_cifar100_has_no_offline_copy_and_says_so():
    with pytest.raises(ValueError, match="no offline copy of cifar100.*"
                       "--data tfds"):
        bench.load_data("offline", dataset="cifar100")
    with pytest.raises(ValueError, match="dataset"):
        bench.load_data("tfds", dataset="mnist")
    with pytest.raises(SystemExit):
        bench.parse_args(["--dataset", "svhn"])
    args = bench.parse_args(["--dataset", "cifar100", "--data", "tfds"])
    assert args.out == "benchmarks/results/cifar100"


@pytest.mark.backend_independent
def test_sam_rows_use_the_papers_msharpness():
    ctx = bench.RecipeContext(1000, 2, 0, True)
    for name, base in (("sam-sgd", "sgd"), ("sam-adam", "adam")):
        optimizer, _, wrap = bench.build_method(name, ctx)
        assert optimizer.base == base and wrap is bench.TwoPassModel
        assert optimizer.batch_split == bench.MSHARPNESS == 8


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the TFDS path is backend-independent NumPy; "
                    "checked once")
def test_bsam_table_rows_run_on_mock_cifar100():
    # The five rows of the report's bSAM table, on TFDS mock CIFAR-100.
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=48):
        (x, y), _, _ = bench.load_data("tfds", dataset="cifar100")
        assert x.shape[1:] == (32, 32, 3) and y.max() < 100
        payload = bench.main([
            "--dataset", "cifar100", "--data", "tfds",
            "--methods", "sgd,sam-sgd,adam,sam-adam,bsam", "--model", "cnn",
            "--epochs", "1", "--batch-size", "16", "--test-samples", "2",
            "--no-augment", "--out", "", "--verbose", "0"])
    records = payload["records"]
    assert [r["method"] for r in records] == [
        "sgd", "sam-sgd", "adam", "sam-adam", "bsam"], records
    for r in records:
        assert r["dataset"] == "cifar100" and r["mean"]["nll"] > 0
    assert records[-1]["bma"] is not None
