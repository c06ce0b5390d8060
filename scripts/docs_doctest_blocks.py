"""A griffe extension for the API reference (mkdocs.yml): doctest examples
(`>>>` lines and their output) become `pycon` code blocks.

Keras-style docstrings put `>>>` examples under "Example:" or in the prose;
griffe's Google parser only reads them as code in an "Examples:" section,
and elsewhere Markdown would show `>>> x` as a quotation. Docstrings that
have an "Examples:" section are left to griffe.
"""

import re

import griffe

_PROMPT = re.compile(r"^(?P<indent>\s*)>>> ")
_EXAMPLES_SECTION = re.compile(r"^\s*Examples:\s*$", re.MULTILINE)


def fence_doctests(text):
    """`text` with every run of doctest lines outside a fenced block wrapped
    in a ```pycon fence at the run's indentation.

    A run starts at a `>>>` line and takes the lines after it up to a blank
    line or a line indented less than the prompt (the expected output).
    """
    if _EXAMPLES_SECTION.search(text):
        return text
    lines, out, in_fence, index = text.split("\n"), [], False, 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        prompt = None if in_fence else _PROMPT.match(line)
        if prompt is None:
            out.append(line)
            index += 1
            continue
        indent = prompt.group("indent")
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip() and \
                lines[index].startswith(indent):
            out.append(lines[index])
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Wraps the doctest examples of every docstring in code fences."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
