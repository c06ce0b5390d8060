"""Turn `step_cost.py` JSON results into a markdown table.

    python benchmarks/report.py benchmarks/results/step_cost_cpu.json \
        > benchmarks/results/step_cost_cpu.md

One row per (run, optimizer): median milliseconds per training step, the
ratio to Adam and to SGD with momentum measured in the same run, and the
optimizer state as a multiple of the parameter count.
"""

import argparse
import json
import sys

BASELINES = ("adam", "sgd")


def describe_device(device):
    if device["kind"] == "gpu":
        return device["name"]
    return f"CPU {device['name']} ({device['cores']} cores)"


def run_rows(result):
    medians = {name: entry["median_s_per_step"]
               for name, entry in result["optimizers"].items()}
    backend = f"{result['backend']} {result['backend_version']}"
    model = f"{result['model']} ({result['params']:,} params)"
    for name, entry in result["optimizers"].items():
        ratios = [
            f"{medians[name] / medians[base]:.2f}" if base in medians else "-"
            for base in BASELINES
        ]
        minima = {n: e["min_s_per_step"]
                  for n, e in result["optimizers"].items()}
        first = {n: e.get("first_fit_s")
                 for n, e in result["optimizers"].items()}
        min_ratio = (f"{minima[name] / minima['adam']:.2f}"
                     if "adam" in minima else "-")
        first_fit = ("-" if first[name] is None
                     else f"{first[name]:.1f}")
        first_ratio = (f"{first[name] / first['adam']:.2f}"
                       if first[name] is not None and first.get("adam")
                       else "-")
        yield [backend, model, name, f"{1e3 * medians[name]:.1f}", *ratios,
               min_ratio, first_fit, first_ratio,
               f"{entry['state_per_param']:.3g}x"]


def markdown(results):
    header = ["backend", "model", "optimizer", "ms/step (median)",
              "vs Adam", "vs SGD", "min vs min Adam", "first fit s",
              "first fit vs Adam", "state / params"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * 7) + "|"]
    for result in results:
        lines += ["| " + " | ".join(row) + " |" for row in run_rows(result)]

    notes = ["", "Runs:", ""]
    for r in results:
        quick = " **quick mode: not a measurement**" if r.get("quick") else ""
        load = (f"load average {r['load_average']:.1f}; "
                if "load_average" in r else "")
        commit = f"commit {r['commit']}; " if r.get("commit") else ""
        notes.append(
            f"- {r['backend']}: {describe_device(r['device'])}; keras "
            f"{r['keras_version']}, jit_compile={r['jit_compile']}; batch "
            f"{r['batch_size']}, {r['timed_steps']} timed steps x "
            f"{r['rounds']} interleaved rounds; {r['date']}; {load}{commit}"
            f"`{r['command']}`{quick}"
        )
    return "\n".join(["# Training-step cost", ""] + lines + notes) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_path")
    parser.add_argument("-o", "--output", help="default: stdout")
    args = parser.parse_args(argv)
    with open(args.json_path) as f:
        results = json.load(f)
    if isinstance(results, dict):
        results = [results]
    text = markdown(results)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
