"""Smoke test of benchmarks/step_cost.py (the training-step cost benchmark).

Runs `step_cost.py --quick` as a command (inside this process: the
`run_script` fixture) on the current backend and checks the JSON it writes.
The timings of a quick run are not meaningful; only their presence and sign
are checked.
"""

import json
import pathlib

import keras
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / (
    "step_cost.py"
)


@pytest.mark.slow
def test_step_cost_quick(tmp_path, run_script, capsys):
    out = tmp_path / "step_cost.json"
    run_script(SCRIPT, "--quick", "--json", out)
    assert "soba" in capsys.readouterr().out

    results = json.loads(out.read_text())
    assert isinstance(results, list) and len(results) == 1
    result = results[0]
    for key in ("date", "command", "backend", "backend_version",
                "keras_version", "device", "model", "params", "batch_size",
                "timed_steps", "rounds", "optimizers", "ratios"):
        assert key in result, key
    assert result["backend"] == keras.backend.backend()
    assert result["model"] == "cnn"
    assert result["params"] > 0
    assert result["keep_freed_memory"] is False

    assert set(result["optimizers"]) == {"adam", "sgd", "soba"}
    for entry in result["optimizers"].values():
        assert entry["median_s_per_step"] > 0
        assert len(entry["s_per_step"]) == result["rounds"]
        assert all(t > 0 for t in entry["s_per_step"])
    states = {name: entry["state_per_param"]
              for name, entry in result["optimizers"].items()}
    assert states == pytest.approx({"adam": 2.0, "sgd": 1.0, "soba": 3.0})

    assert set(result["ratios"]) == {"soba"}
    assert set(result["ratios"]["soba"]) == {
        "vs_adam", "vs_sgd", "min_vs_adam", "min_vs_sgd",
        "paired_vs_adam", "paired_vs_sgd",
        "first_fit_vs_adam", "first_fit_vs_sgd"}
    assert all(r > 0 for r in result["ratios"]["soba"].values())
    for entry in result["optimizers"].values():
        assert entry["first_fit_s"] > 0
        assert entry["min_s_per_step"] == min(entry["s_per_step"])


@pytest.mark.backend_independent
def test_paired_ratio_is_the_median_of_the_rounds_ratios():
    from benchmarks.step_cost import paired_ratio

    # A slow-down hit Adam's measurement of round 2 and SOBA's of round 3:
    # the rounds' ratios are 1.1, 0.67 and 2, the medians' ratio is 1.
    soba = [0.011, 0.020, 0.040]
    adam = [0.010, 0.030, 0.020]
    assert paired_ratio(soba, adam) == pytest.approx(1.1)
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0]) == 3.0
    with pytest.raises(ValueError, match="one time per round"):
        paired_ratio([1.0, 2.0], [1.0])


@pytest.mark.slow
@pytest.mark.backend_independent
def test_step_cost_keeps_freed_memory_in_a_fresh_process(tmp_path):
    # glibc reads its settings at start-up: the script runs itself again.
    import os
    import subprocess
    import sys

    out = tmp_path / "step_cost.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_")}
    subprocess.run([sys.executable, str(SCRIPT), "--quick",
                    "--optimizers", "sgd", "--keep-freed-memory",
                    "--json", str(out)], check=True, env=env,
                   capture_output=True, timeout=600)
    (result,) = json.loads(out.read_text())
    assert result["keep_freed_memory"] is True
    assert "--keep-freed-memory" in result["command"]


CONTINUAL = SCRIPT.parent / "continual.py"


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the command is smoke-tested once; run_sequence "
                    "itself is tested on every backend in test_continual")
def test_continual_benchmark_quick(tmp_path, run_script):
    out = tmp_path / "continual"
    run_script(CONTINUAL, "--quick", "--seeds", "1", "--epochs", "1",
               "--out", out)
    payload = json.loads((tmp_path / "continual.json").read_text())
    methods = {r["method"] for r in payload["records"]}
    assert "SOBA, posterior as prior (τ=1)" in methods
    assert "Adam fine-tuning" in methods
    for record in payload["records"]:
        matrix = record["matrix"]
        assert len(matrix) == 2 and 0.0 <= matrix[1][0] <= 1.0
    table = (tmp_path / "continual.md").read_text()
    assert "quick mode: not a measurement" in table
    assert table.count("| split digits |") == len(payload["records"])


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="times JAX functions (the JAX training noise)")
def test_jax_update_parts_runs():
    from benchmarks import jax_update_parts

    results = jax_update_parts.main(["--size", "1000", "--repeats", "2"])
    assert set(results) == {"adam", "counter_bits", "counter_normal",
                            "erf_inv", "erf_inv_normal", "threefry_normal",
                            "box_muller", "soba_update"}
    assert all(ms > 0 for ms in results.values())
