"""Continual-learning benchmark: the posterior as prior against the baselines.

    KERAS_BACKEND=tensorflow python benchmarks/continual.py \
        --out benchmarks/results/continual

Trains an MLP (64-100-10) through each task sequence with every method and
writes `<out>.json` (accuracy matrices per seed) and `<out>.md` (average
accuracy and forgetting, mean ± std over seeds), which the docs include.

Sequences (offline): split digits (5 tasks of 2 classes; task- and
class-incremental evaluation) and permuted digits (3 tasks; the labels are
shared, so there is one scenario, reported as "domain").

Methods: Adam fine-tuning; Adam with an L2 pull to the previous weights and
online EWC (diagonal empirical Fisher), each at three strengths, every one
reported (no strength is picked on the test data); SOBA without a prior
(the same optimizer fine-tuned, the controlled comparison); SOBA with the
previous posterior as prior (τ = 1, exact, and τ = 0.3, tempered).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import keras  # noqa: E402

from benchmarks import continual_baselines as baselines  # noqa: E402
from keras_bayes import continual as cl  # noqa: E402
from keras_bayes.optimizers import SOBA  # noqa: E402


def mlp(hidden=100):
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(10),
    ])


def soba(learning_rate=0.2, hess_init=0.5):
    def make(task, prior):
        return SOBA(learning_rate, ess=len(task.x_train), hess_init=hess_init,
                    seed=0, prior=prior)
    return make


def strategies(quick=False):
    """(label, factory) pairs; a factory makes a fresh strategy per run."""
    out = [("Adam fine-tuning", lambda: baselines.FineTune(1e-3))]
    for strength in ((0.1,) if quick else (0.01, 0.1, 1.0)):
        out.append((f"Adam + L2 to previous (λ={strength:g})",
                    lambda s=strength: baselines.L2Anchor(s)))
    for strength in ((100.0,) if quick else (10.0, 100.0, 1000.0)):
        out.append((f"Adam + online EWC (λ={strength:g})",
                    lambda s=strength: baselines.OnlineEWC(s)))
    out.append(("SOBA, no prior (fine-tuning)",
                lambda: baselines.BayesianPrior(soba(), use_prior=False)))
    out.append(("SOBA, posterior as prior (τ=1)",
                lambda: baselines.BayesianPrior(soba())))
    if not quick:
        out.append(("SOBA, posterior as prior (τ=0.3)",
                    lambda: baselines.BayesianPrior(soba(),
                                                    prior_strength=0.3)))
    return out


def sequences(quick=False):
    if quick:
        return {"split digits": (cl.split_digits(classes_per_task=5),
                                 ("task", "class"))}
    return {
        "split digits": (cl.split_digits(classes_per_task=2),
                         ("task", "class")),
        "permuted digits": (cl.permuted_digits(num_tasks=3), ("class",)),
    }


def run(seeds, epochs, quick=False):
    records = []
    for sequence, (tasks, scenarios) in sequences(quick).items():
        for label, factory in strategies(quick):
            for seed in seeds:
                start = time.perf_counter()
                result = baselines.run_sequence(factory(), tasks, mlp,
                                         epochs=epochs, batch_size=32,
                                         scenarios=scenarios, seed=seed)
                seconds = time.perf_counter() - start
                for scenario in scenarios:
                    summary = result.summary(scenario)
                    records.append({
                        "sequence": sequence,
                        "scenario": ("domain" if sequence.startswith(
                            "permuted") else scenario),
                        "method": label,
                        "seed": seed,
                        "seconds": seconds,
                        "matrix": result.matrices[scenario].tolist(),
                        **summary,
                    })
                print(f"{sequence:16s} {label:36s} seed {seed}: "
                      + ", ".join(
                          f"{s} avg {result.summary(s)['average_accuracy']:.3f}"
                          f" forg {result.summary(s)['forgetting']:.3f}"
                          for s in scenarios)
                      + f" ({seconds:.0f} s)", flush=True)
    return records


def markdown(payload):
    records = payload["records"]
    lines = [
        "| sequence | scenario | method | average accuracy | forgetting | "
        "backward transfer |",
        "|---|---|---|---:|---:|---:|",
    ]
    keys = []
    for r in records:
        key = (r["sequence"], r["scenario"], r["method"])
        if key not in keys:
            keys.append(key)

    def stat(values):
        values = np.asarray(values)
        return f"{values.mean():.3f} ± {values.std():.3f}"

    for key in keys:
        rows = [r for r in records
                if (r["sequence"], r["scenario"], r["method"]) == key]
        lines.append("| " + " | ".join([
            *key,
            stat([r["average_accuracy"] for r in rows]),
            stat([r["forgetting"] for r in rows]),
            stat([r["backward_transfer"] for r in rows]),
        ]) + " |")
    quick = " **quick mode: not a measurement**" if payload["quick"] else ""
    notes = [
        "",
        f"Mean ± std over seeds {payload['seeds']}; {payload['epochs']} "
        f"epochs per task, batch 32, MLP 64-100-10; backend "
        f"{payload['backend']} on {payload['device']}; keras "
        f"{payload['keras_version']}; {payload['date']}; "
        f"`{payload['command']}`{quick}",
        "",
        "Average accuracy: the mean test accuracy over all tasks after the "
        "last one. Forgetting: the mean drop from an old task's best "
        "accuracy to its final one. Backward transfer: final minus "
        "just-learnt accuracy (negative = forgetting).",
    ]
    return "\n".join(["# Continual learning", ""] + lines + notes) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/continual",
                        help="output path without extension")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="one small sequence, few methods (smoke test)")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    records = run(seeds, args.epochs, quick=args.quick)
    payload = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(
            ["benchmarks/continual.py"] + (argv if argv is not None
                                           else sys.argv[1:])),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "device": f"CPU {platform.processor() or platform.machine()} "
                  f"({os.cpu_count()} cores)",
        "seeds": seeds,
        "epochs": args.epochs,
        "quick": args.quick,
        "records": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
