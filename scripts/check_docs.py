"""Checks the built site (site/): every public name is in the API reference,
and every link between the site's own pages and files resolves.

Run by scripts/build_docs.sh after `mkdocs build --strict`; exits 1 with a
list of what is missing. Reads the sources with griffe (no Keras import).

- Public names: the `__all__` of each module in `MODULES` (a module without
  one: its documented public members). Each must be in the
  site's `objects.inv` as `module.name`, which mkdocstrings writes for every
  object it renders; a submodule named in `__all__` counts when its own page
  documents it.
- Links: every `href`/`src` in the HTML that is not a URL with a scheme
  (`https:`, `mailto:`...) must name a file under site/, and a `#fragment`
  must name an `id` in that file.
"""

import html.parser
import os
import sys
import urllib.parse
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = (
    "keras_bayes", "keras_bayes.optimizers", "keras_bayes.callbacks",
    "keras_bayes.metrics", "keras_bayes.training", "keras_bayes.continual",
    "keras_bayes.distributed", "keras_bayes.plots", "keras_bayes.datasets",
    "keras_bayes.layers", "keras_bayes.models", "keras_bayes.posterior",
    "keras_bayes.predictive",
)


def public_names(package, module_path):
    """The names `module_path` exports: its `__all__`; for a module without
    one, the public members defined in it that have a docstring (those that
    mkdocstrings renders; every public module is meant to have `__all__`)."""
    module = package[module_path[len("keras_bayes."):]] if "." in module_path \
        else package
    if module.exports is not None:
        return [str(name) for name in module.exports]
    return sorted(name for name, member in module.members.items()
                  if not member.is_alias and member.is_public
                  and member.docstring is not None)


def inventory_names(site):
    """The object names in mkdocstrings' Sphinx inventory, site/objects.inv."""
    with open(os.path.join(site, "objects.inv"), "rb") as handle:
        data = handle.read()
    # Four header lines, then zlib-compressed "name domain:role prio uri dispname".
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}


def load_package():
    """keras_bayes as griffe reads it from the sources (the `docs` extra)."""
    import griffe  # here, so that the link check runs without it

    return griffe.load("keras_bayes", search_paths=[ROOT])


def missing_names(site):
    package = load_package()
    documented = inventory_names(site)
    missing = []
    for module_path in MODULES:
        for name in public_names(package, module_path):
            if f"{module_path}.{name}" not in documented:
                missing.append(f"{module_path}.{name}")
    return missing


def has_docstring(package, path):
    """Whether the object at `path` (resolving imports) has a docstring:
    mkdocstrings renders documented objects only."""
    try:
        return package[path[len("keras_bayes."):]].docstring is not None
    except Exception:  # an alias griffe cannot resolve: say nothing
        return True


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" and value:
                self.ids.add(value)
            elif key in ("href", "src") and value is not None:
                self.links.append(value)


def _parse(path):
    parser = _Links()
    with open(path, encoding="utf-8") as handle:
        parser.feed(handle.read())
    return parser


def broken_links(site):
    pages, broken = {}, []
    for folder, _, files in os.walk(site):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(folder, name)
                pages[os.path.normpath(path)] = _parse(path)
    for page, parsed in sorted(pages.items()):
        for link in parsed.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc:
                continue  # a URL outside the site: not fetched (offline)
            target = page
            if parts.path:
                # "/x" (the 404 page's links, for any depth) is site-relative.
                base = site if parts.path.startswith("/") else os.path.dirname(page)
                target = os.path.normpath(os.path.join(
                    base, urllib.parse.unquote(parts.path).lstrip("/")))
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
            where = f"{os.path.relpath(page, site)}: {link}"
            if not os.path.isfile(target):
                broken.append(f"{where} (no file)")
            elif parts.fragment and target.endswith(".html"):
                ids = pages[target].ids if target in pages else _parse(target).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no such anchor)")
    return broken


def main(site=os.path.join(ROOT, "site")):
    missing, broken = missing_names(site), broken_links(site)
    package = load_package() if missing else None
    for name in missing:
        why = "" if has_docstring(package, name) else (
            " (it has no docstring: add one, a string literal after an "
            "assignment)")
        print(f"not in the API reference: {name}{why}")
    for link in broken:
        print(f"broken link: {link}")
    if missing or broken:
        return 1
    print("check_docs: every public name is in the reference; no broken link")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
