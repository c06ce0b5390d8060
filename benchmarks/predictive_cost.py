"""Cost of `keras_bayes.Predictive` against plain `model.predict` passes.

For S samples, `Predictive(model, S).predict(x)` does S passes over `x`, each
at a fresh posterior sample, then averages in log space. The reference is S
plain `model.predict(x)` calls at fixed weights, in the same process. The
ratio is what sampling, writing the sample into the model and averaging add
(target: at most 1.1x).

    KERAS_BACKEND=jax python benchmarks/predictive_cost.py
    KERAS_BACKEND=torch python benchmarks/predictive_cost.py --quick

Each measurement is repeated `--rounds` times, interleaved, and the median is
reported.
"""

import argparse
import json
import statistics
import time

import keras
import numpy as np

import keras_bayes


def build(model_name):
    if model_name == "mlp":
        shape = (40,)
        layers = [keras.layers.Dense(128, activation="relu"),
                  keras.layers.Dense(128, activation="relu")]
    else:
        shape = (32, 32, 3)
        layers = [keras.layers.Conv2D(32, 3, padding="same",
                                      activation="relu"),
                  keras.layers.MaxPooling2D(),
                  keras.layers.Conv2D(64, 3, padding="same",
                                      activation="relu"),
                  keras.layers.GlobalAveragePooling2D()]
    model = keras.Sequential([keras.Input(shape), *layers,
                              keras.layers.Dense(10)])
    return model, shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="cnn")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.samples, args.rounds = 256, 3, 2

    keras.utils.set_random_seed(0)
    model, shape = build(args.model)
    x = np.random.default_rng(0).standard_normal(
        (args.examples, *shape)).astype("float32")
    y = np.zeros(args.examples, "int64")
    model.compile(keras_bayes.optimizers.SOBA(0.01, ess=args.examples,
                                              seed=0),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    predictive = keras_bayes.Predictive(model, args.samples,
                                        from_logits=True,
                                        batch_size=args.batch_size)

    def plain():
        for _ in range(args.samples):
            np.asarray(model.predict(x, batch_size=args.batch_size,
                                     verbose=0))

    def averaged():
        predictive.predict(x)

    plain()
    averaged()  # warm-up: compilation excluded
    times = {"plain": [], "predictive": []}
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("predictive", averaged)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["predictive"] / medians["plain"]
    result = {
        "backend": keras.backend.backend(), "model": args.model,
        "examples": args.examples, "samples": args.samples,
        "batch_size": args.batch_size, "seconds": medians, "ratio": ratio,
        "keras": keras.__version__,
    }
    print(f"backend {result['backend']}, {args.model}, {args.examples} "
          f"examples, {args.samples} samples: {args.samples} x predict "
          f"{medians['plain']:.3f} s, Predictive {medians['predictive']:.3f}"
          f" s, ratio {ratio:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
