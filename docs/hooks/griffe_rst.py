"""Griffe extension for the docs site: the reST pieces of the package's docstrings as Markdown.

The docstrings are Google style with a few reST constructs, which mkdocstrings would print verbatim:

- a ``.. math::`` directive and its indented body become a ``$$ ... $$`` block (rendered by arithmatex + MathJax);
- an inline ``:math:`...``` role becomes ``$...$``;
- the roles ``:func:``, ``:class:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``, ``:exc:``, ``:obj:`` become code;
- a paragraph that ends in ``::`` before an indented literal block ends in ``:`` (the block stays a code block);
- an ``Args:`` entry that documents several parameters at once (``enc_mean, enc_logvar: ...``), which Google style
  does not have, becomes one entry per parameter with the same description, so that griffe can still check every
  documented name against the signature;
- in a ``Returns:`` section, a colon on its first line is written as the HTML entity ``&#58;``: the package's
  ``Returns:`` sections are prose (``A dict of ... tensors: ...``), and griffe would read the text before the first
  colon as the return type;
- an ``Example:`` section becomes ``Examples:``, the Google section that griffe renders as doctest code (``Example:``
  would be an admonition whose ``>>>`` lines Markdown reads as nested quotes).

Loaded from ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``); the package itself
is not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_CODE_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")
_EXAMPLE_SECTION = re.compile(r"^(?P<indent> *)Example:[ \t]*$", re.MULTILINE)
_CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)")
_RETURNS_SECTION = re.compile(r"^ *Returns:[ \t]*$")
_ARGS_SECTION = re.compile(r"^(?P<indent> *)(?:Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_GROUPED_ARG = re.compile(r"^(?P<indent> +)(?P<names>\*{0,2}\w+(?:, *\*{0,2}\w+)+)(?P<rest>(?: *\([^)]*\))?:(?: .*)?)$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _math_blocks(lines: list[str]) -> list[str]:
    """Replace each ``.. math::`` directive and its indented body by a ``$$`` block at the directive's indent."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match.group("indent"))
        body: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():  # the blank lines after the body stay outside the block
            body.pop()
            i -= 1
        body = [line for line in body if line.strip()]
        if not body:
            continue
        cut = min(_indent_of(line) for line in body)
        pad = " " * indent
        if out and out[-1].strip():
            out.append("")
        out.extend([f"{pad}$$", *(pad + line[cut:] for line in body), f"{pad}$$"])
        if i < len(lines) and lines[i].strip():
            out.append("")
    return out


def _literal_markers(lines: list[str]) -> list[str]:
    """End a paragraph line in ``:`` instead of reST's ``::`` where an indented block follows."""
    out = list(lines)
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::") or line.strip() == "::":
            continue
        rest = [other for other in lines[i + 1 :] if other.strip()]
        if i + 1 < len(lines) and not lines[i + 1].strip() and rest and _indent_of(rest[0]) > _indent_of(line):
            out[i] = line.rstrip()[:-1]
    return out


def _split_grouped_args(lines: list[str]) -> list[str]:
    """Write an ``Args:`` entry ``a, b: text`` (and its continuation lines) as ``a: text`` and ``b: text``."""
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _ARGS_SECTION.match(line)
        if header is not None:
            section_indent = len(header.group("indent"))
        elif line.strip() and section_indent is not None and _indent_of(line) <= section_indent:
            section_indent = None
        grouped = _GROUPED_ARG.match(line) if section_indent is not None else None
        if grouped is None or len(grouped.group("indent")) <= section_indent:
            out.append(line)
            i += 1
            continue
        indent = len(grouped.group("indent"))
        more: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() and _indent_of(lines[i]) > indent:
            more.append(lines[i])
            i += 1
        for name in grouped.group("names").split(","):
            out.extend([f"{grouped.group('indent')}{name.strip()}{grouped.group('rest')}", *more])
    return out


def _returns_colons(lines: list[str]) -> list[str]:
    """Write the colons outside code spans on a ``Returns:`` section's first line as ``&#58;``."""
    out = list(lines)
    for i, line in enumerate(lines):
        if _RETURNS_SECTION.match(line) is None:
            continue
        first = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
        if first is None or _indent_of(lines[first]) <= _indent_of(line):
            continue
        parts = _CODE_SPAN.split(lines[first])  # odd-numbered parts are the code spans
        out[first] = "".join(part if k % 2 else part.replace(":", "&#58;") for k, part in enumerate(parts))
    return out


def rst_to_markdown(text: str) -> str:
    """Return ``text`` (a docstring) with its reST math, roles and literal markers written as Markdown."""
    text = _MATH_ROLE.sub(lambda m: "$" + " ".join(m.group(1).split()) + "$", text)
    text = _CODE_ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = _EXAMPLE_SECTION.sub(lambda m: f"{m.group('indent')}Examples:", text)
    lines = _returns_colons(_split_grouped_args(_literal_markers(_math_blocks(text.split("\n")))))
    return "\n".join(lines)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`rst_to_markdown` before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
