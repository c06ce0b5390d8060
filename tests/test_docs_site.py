"""The documentation site's inputs: the rendered tutorial pages match the
tutorials, and the checks of scripts/check_docs.py catch what they should.

The site itself is built (strictly) by scripts/build_docs.sh, which
scripts/test.sh runs before the tests.
"""

import importlib.util
import os
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_tutorials = _script("render_tutorials")
TUTORIALS = sorted(render_tutorials.SETTINGS)


@pytest.mark.backend_independent
def test_every_tutorial_has_settings():
    on_disk = sorted(name[:-3] for name in os.listdir(
        os.path.join(ROOT, "tutorials")) if name.endswith(".py"))
    assert TUTORIALS == on_disk


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", TUTORIALS)
def test_rendered_page_matches_its_tutorial(name):
    """Fails when a tutorial's cells changed and its page was not rendered
    again: `python scripts/render_tutorials.py NAME` (code changed) or
    `python scripts/render_tutorials.py --text-only NAME` (prose only)."""
    with open(render_tutorials.page_path(name), encoding="utf-8") as handle:
        page = handle.read()
    # Raises when a code cell differs; then the prose must match too.
    assert render_tutorials.rerender_text(name) == page
    for output in render_tutorials.page_outputs(page):
        for figure in output["figures"]:
            assert os.path.isfile(os.path.join(render_tutorials.PAGES, figure))


@pytest.mark.backend_independent
def test_changed_code_is_detected(tmp_path, monkeypatch):
    name = TUTORIALS[0]
    with open(os.path.join(ROOT, "tutorials", name + ".py"),
              encoding="utf-8") as handle:
        source = handle.read()
    edited = tmp_path / "tutorials"
    edited.mkdir()
    (edited / (name + ".py")).write_text(
        source.replace("import keras\n", "import keras  # edited\n", 1),
        encoding="utf-8")
    monkeypatch.setattr(render_tutorials, "TUTORIALS", str(edited))
    with pytest.raises(ValueError, match="changed since its page"):
        render_tutorials.rerender_text(name)


@pytest.mark.backend_independent
def test_percent_format_cells():
    text = ("# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n"
            "# %%\nx = 1\nprint(x)\n\n# %%\n\n# %% [markdown]\n# More.\n")
    assert render_tutorials.parse_cells(text) == [
        ("markdown", "# Title\n\nSome *text*."),
        ("code", "x = 1\nprint(x)"),
        ("markdown", "More."),
    ]


def _write_site(root, inventory_names, pages):
    lines = "".join(f"{name} py:function 1 reference.html#$ -\n"
                    for name in inventory_names)
    header = (b"# Sphinx inventory version 2\n# Project: x\n# Version: 0\n"
              b"# The remainder of this file is compressed using zlib.\n")
    (root / "objects.inv").write_bytes(
        header + zlib.compress(lines.encode("utf-8")))
    for path, body in pages.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body, encoding="utf-8")


@pytest.mark.backend_independent
def test_check_docs_finds_broken_links(tmp_path):
    check_docs = _script("check_docs")
    _write_site(tmp_path, [], {
        "index.html": ('<a href="a/">a</a> <a href="a/page.html#here">ok</a>'
                       '<a href="https://keras.io">web</a>'
                       '<img src="missing.png"><a href="a/page.html#gone">x</a>'
                       '<a href="#top">top</a><h1 id="top"></h1>'),
        "a/index.html": '<a href="/index.html">root</a>',
        "a/page.html": '<h2 id="here">Here</h2><a href="../index.html">up</a>',
    })
    assert check_docs.broken_links(str(tmp_path)) == [
        "index.html: missing.png (no file)",
        "index.html: a/page.html#gone (no such anchor)",
    ]


@pytest.mark.backend_independent
def test_check_docs_finds_missing_public_names(tmp_path):
    pytest.importorskip("griffe")  # the `docs` extra
    check_docs = _script("check_docs")
    package = check_docs.load_package()
    public = {module: check_docs.public_names(package, module)
              for module in check_docs.MODULES}
    assert "SOBA" in public["keras_bayes.optimizers"]
    everything = [f"{module}.{name}" for module, names in public.items()
                  for name in names]
    _write_site(tmp_path, everything, {})
    assert check_docs.missing_names(str(tmp_path)) == []
    _write_site(tmp_path, [name for name in everything
                           if name != "keras_bayes.optimizers.SOBA"], {})
    assert check_docs.missing_names(str(tmp_path)) == [
        "keras_bayes.optimizers.SOBA"]


@pytest.mark.backend_independent
def test_doctest_examples_become_code_blocks():
    pytest.importorskip("griffe")  # the `docs` extra
    fence = _script("docs_doctest_blocks").fence_doctests
    text = ("Summary.\n\nExample:\n\n    >>> x = f(1,\n    ...       2)\n"
            "    >>> x\n    3\n\n    Prose after.\n```python\n>>> kept\n```")
    assert fence(text) == (
        "Summary.\n\nExample:\n\n    ```pycon\n    >>> x = f(1,\n"
        "    ...       2)\n    >>> x\n    3\n    ```\n\n    Prose after.\n"
        "```python\n>>> kept\n```")
    # griffe reads an "Examples:" section itself.
    examples = "Summary.\n\nExamples:\n    >>> x\n    3"
    assert fence(examples) == examples
