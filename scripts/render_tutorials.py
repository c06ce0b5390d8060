"""Renders the tutorials into documentation pages, with their outputs.

Each tutorial (`tutorials/NN_name.py`, jupytext percent format) is executed
once, cell by cell, in a fresh process with the settings in `SETTINGS`; what
each code cell prints and every matplotlib figure it leaves open are written
into `docs/tutorials/NN_name.md` (figures as `docs/tutorials/NN_name_K.png`).
The pages are committed: the site build only reads them, and
`tests/test_docs_site.py` fails when a tutorial's cells no longer
match its page (run this script again then).

Usage (from the repository root, with the project's environment):

    python scripts/render_tutorials.py                     # all six
    python scripts/render_tutorials.py 02_knowing_what_you_dont_know
    python scripts/render_tutorials.py --text-only [NAME]  # prose changed
                                                           # only: no run

This module imports nothing heavy at import time: the test reads
`parse_cells` and `page_cells` from it without starting a backend.
"""

import contextlib
import glob
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")
PAGES = os.path.join(ROOT, "docs", "tutorials")

# The fast settings (`KERAS_BAYES_FAST=1`, the ones tests/test_tutorials.py
# runs) for every tutorial: 49 to 154 s each on the 2-core CPU this project
# develops on, where the full schedules (5 to 15 times as many epochs) would
# each take well over the 3 minutes a page is worth. Backends: the
# tutorial's own default (JAX) where its JAX run is short, TensorFlow for the
# three whose JAX compiles dominate (the same split as the test suite).
SETTINGS = {
    "01_getting_started": {"KERAS_BACKEND": "jax"},
    "02_knowing_what_you_dont_know": {"KERAS_BACKEND": "jax"},
    "03_choosing_the_noise": {"KERAS_BACKEND": "tensorflow"},
    "04_switching_backends": {"KERAS_BACKEND": "jax"},
    "05_cifar10_in_practice": {"KERAS_BACKEND": "tensorflow"},
    "06_continual_learning": {"KERAS_BACKEND": "tensorflow"},
}
FAST = {"KERAS_BAYES_FAST": "1"}

_CELL = re.compile(r"^# %%(?P<markdown> \[markdown\])?[^\n]*$", re.MULTILINE)
_PAGE_CODE = re.compile(
    r"^<!-- cell (?P<index>\d+) -->\n```python\n(?P<source>.*?)\n```$",
    re.MULTILINE | re.DOTALL)


def parse_cells(text):
    """Splits a percent-format script into `[(kind, source), ...]`.

    `kind` is "markdown" (the `# ` comment prefixes removed) or "code";
    text before the first `# %%` marker and empty cells are dropped.
    """
    markers = list(_CELL.finditer(text))
    cells = []
    for marker, following in zip(markers, markers[1:] + [None]):
        end = following.start() if following else len(text)
        body = text[marker.end():end].strip("\n")
        if marker.group("markdown"):
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#")
                     for line in body.splitlines()]
            cells.append(("markdown", "\n".join(lines).strip()))
        elif body.strip():
            cells.append(("code", body.rstrip()))
    return cells


def page_cells(page_text):
    """The code cells of a rendered page, in order (what `render` wrote)."""
    return [match.group("source") for match in _PAGE_CODE.finditer(page_text)]


def _run_cells(path, figure_prefix):
    """Executes the cells of `path` in one namespace; runs in the worker.

    Returns one `{"stdout": str, "figures": [png paths]}` per code cell.
    """
    with open(path, encoding="utf-8") as handle:
        cells = parse_cells(handle.read())
    namespace = {"__name__": "__main__", "__file__": path}
    outputs = []
    figure_count = 0
    for index, (kind, source) in enumerate(cells):
        if kind != "code":
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(source, f"{path} (cell {index})", "exec"), namespace)
        figures = []
        # Figures the cell left open; `plots` uses the non-interactive Agg
        # backend, so nothing was shown and each is saved exactly once.
        pyplot = sys.modules.get("matplotlib.pyplot")
        for number in pyplot.get_fignums() if pyplot else []:
            figure_count += 1
            name = f"{figure_prefix}_{figure_count}.png"
            pyplot.figure(number).savefig(os.path.join(PAGES, name), dpi=90)
            pyplot.close(number)
            figures.append(name)
        outputs.append({"stdout": buffer.getvalue(), "figures": figures})
    return outputs


def _markdown(source):
    """A markdown cell as Python-Markdown reads it: a list needs a blank
    line before it, which notebook renderers do not ask for."""
    lines = []
    for line in source.splitlines():
        is_item = line.startswith(("- ", "* ", "1. "))
        if is_item and lines and lines[-1].strip() and not lines[-1].startswith(
                ("- ", "* ", "1. ", "  ")):
            lines.append("")
        lines.append(line)
    return "\n".join(lines)


def render(name, outputs, settings):
    """The Markdown page of tutorial `name` from its cells and outputs.

    `outputs`: one `{"stdout", "figures"}` per code cell; `settings`: the
    environment it ran with and `seconds`, recorded in the page's header so
    that `--text-only` can write the page again without running it.
    """
    with open(os.path.join(TUTORIALS, name + ".py"), encoding="utf-8") as handle:
        cells = parse_cells(handle.read())
    flags = " ".join(f"`{key}={value}`" for key, value in settings.items()
                     if key != "seconds")
    lines = [
        f"<!-- Generated by scripts/render_tutorials.py from "
        f"tutorials/{name}.py: edit the tutorial, then run the script. "
        f"settings: {json.dumps(settings, sort_keys=True)} -->",
        "",
    ]
    code_outputs = iter(outputs)
    for index, (kind, source) in enumerate(cells):
        if kind == "markdown":
            lines += [_markdown(source), ""]
            if index == 0:
                lines += [
                    '!!! note "How this page was made"',
                    f"    Executed by `scripts/render_tutorials.py` with "
                    f"{flags}, the short schedules of the test suite, in "
                    f"{settings['seconds']:.0f} s on a 2-core CPU; the "
                    f"outputs below are from that run. The full schedules: "
                    f"`python tutorials/{name}.py`; numbers quoted in the "
                    f"text are from those.",
                    "",
                ]
            continue
        output = next(code_outputs)
        lines += [f"<!-- cell {index} -->", "```python", source, "```", ""]
        if output["stdout"].strip():
            lines += ["```text", output["stdout"].rstrip(), "```", ""]
        for figure in output["figures"]:
            lines += [f"![figure of {name}]({figure})", ""]
        lines += [f"<!-- end of cell {index} -->", ""]
    return "\n".join(lines).rstrip() + "\n"


_SETTINGS = re.compile(r"settings: (\{.*?\}) -->")
_OUTPUT = re.compile(
    r"<!-- cell (\d+) -->\n```python\n.*?\n```\n\n"
    r"(?:```text\n(?P<stdout>.*?)\n```\n\n)?(?P<figures>(?:!\[.*?\]\(.*?\)\n\n)*)"
    r"<!-- end of cell \1 -->", re.DOTALL)


def page_settings(page_text):
    """The settings recorded in a page's header."""
    return json.loads(_SETTINGS.search(page_text).group(1))


def page_outputs(page_text):
    """The outputs of each code cell as recorded in a rendered page."""
    return [{"stdout": match.group("stdout") or "",
             "figures": re.findall(r"\]\((.*?)\)", match.group("figures"))}
            for match in _OUTPUT.finditer(page_text)]


def page_path(name):
    return os.path.join(PAGES, name + ".md")


def tutorial_cells(name):
    with open(os.path.join(TUTORIALS, name + ".py"), encoding="utf-8") as handle:
        return parse_cells(handle.read())


def rerender_text(name):
    """The page of `name` with the tutorial's current text and the outputs
    already recorded; ValueError when its code cells changed (run it)."""
    with open(page_path(name), encoding="utf-8") as handle:
        page = handle.read()
    code = [source for kind, source in tutorial_cells(name) if kind == "code"]
    if code != page_cells(page):
        raise ValueError(f"the code of tutorials/{name}.py changed since its "
                         f"page was rendered: run scripts/render_tutorials.py "
                         f"{name}")
    return render(name, page_outputs(page), page_settings(page))


def render_one(name):
    settings = {**SETTINGS[name], **FAST}
    env = {**os.environ, **settings}
    for old in glob.glob(os.path.join(PAGES, f"{name}_*.png")):
        os.remove(old)
    with tempfile.TemporaryDirectory() as scratch:
        env["TMPDIR"] = scratch
        result_path = os.path.join(scratch, "outputs.json")
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                        name, result_path], cwd=ROOT, env=env, check=True)
        seconds = round(time.perf_counter() - start)
        with open(result_path, encoding="utf-8") as handle:
            outputs = json.load(handle)
    page = render(name, outputs, {**settings, "seconds": seconds})
    with open(page_path(name), "w", encoding="utf-8") as handle:
        handle.write(page)
    print(f"{name}: {seconds} s")


def main(argv):
    if argv[:1] == ["--worker"]:
        name, result_path = argv[1], argv[2]
        sys.path.insert(0, ROOT)
        outputs = _run_cells(os.path.join(TUTORIALS, name + ".py"), name)
        with open(result_path, "w", encoding="utf-8") as handle:
            json.dump(outputs, handle)
        return
    text_only = argv[:1] == ["--text-only"]
    names = argv[1:] if text_only else argv
    os.makedirs(PAGES, exist_ok=True)
    for name in names or sorted(SETTINGS):
        if text_only:
            page = rerender_text(name)  # reads the page: before opening it
            with open(page_path(name), "w", encoding="utf-8") as handle:
                handle.write(page)
        else:
            render_one(name)


if __name__ == "__main__":
    main(sys.argv[1:])
