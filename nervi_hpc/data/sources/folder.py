"""A folder of images whose file names carry the parameters, e.g. `t{t}_theta{theta}_phi{phi}.png`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...errors import SourceError
from .files import NUMBER, Entry, FileSource

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class ImageFolder(FileSource):
    """The images under a folder whose relative paths match a pattern.

    The pattern is a relative path with `/` between folder levels, e.g. `t{t}/theta{theta}.png`.
    Each `{name}` placeholder matches a number (signed, decimal, optional exponent) and becomes
    a parameter, in pattern order; everything else matches literally. Files that do not match
    are ignored.
    """

    @classmethod
    def open(cls, path, pattern: str, *, background=None, mask_tolerance: int = 0,
             mode: str = "unknown") -> "ImageFolder":
        folder = Path(path)
        names, levels = _compile(pattern)
        if not folder.is_dir():
            raise SourceError(f"{folder}: no such image folder")
        entries = _scan(folder, levels, names)
        if not entries:
            raise SourceError(f"{folder}: no file matches the pattern {pattern!r}")
        return cls.from_entries(names, entries, description=f"image folder {folder} ({pattern})",
                                background=background, mask_tolerance=mask_tolerance, mode=mode)


def _compile(pattern: str) -> tuple[list[str], list[re.Pattern]]:
    """Parameter names and one regular expression per path level of `pattern`."""
    def bad(problem: str) -> SourceError:
        return SourceError(f"image folder pattern {pattern!r}: {problem}")

    names: list[str] = []
    levels = []
    for level in pattern.split("/"):
        if not level:
            raise bad("empty path level (leading, trailing or doubled '/')")
        regex, end = [], 0
        for match in _PLACEHOLDER.finditer(level):
            name = match.group(1)
            if not name.isidentifier():
                raise bad(f"placeholder {{{name}}} is not a valid name (letters, digits, '_')")
            if name in names:
                raise bad(f"placeholder {{{name}}} appears twice")
            if match.start() == end and regex:
                raise bad(f"placeholder {{{name}}} must be separated from the one before by literal text")
            regex += [re.escape(_literal(level[end:match.start()], bad)), f"(?P<{name}>{NUMBER})"]
            names.append(name)
            end = match.end()
        regex.append(re.escape(_literal(level[end:], bad)))
        levels.append(re.compile("".join(regex)))
    if not names:
        raise bad("no {name} placeholder (at least one parameter is needed)")
    return names, levels


def _literal(text: str, bad) -> str:
    if "{" in text or "}" in text:
        raise bad("unmatched '{' or '}'")
    return text


def _scan(folder: Path, levels: list[re.Pattern], names: list[str]) -> list[Entry]:
    """An Entry per file whose path below `folder` matches `levels`, one level at a time
    (folders that cannot match are never entered)."""
    found: list[tuple[str, dict[str, str]]] = [(str(folder), {})]
    for depth, level in enumerate(levels):
        last = depth == len(levels) - 1
        deeper = []
        for directory, values in found:
            for entry in _list(directory):
                match = level.fullmatch(entry.name)
                if match and (entry.is_file() if last else entry.is_dir()):
                    deeper.append((entry.path, values | match.groupdict()))
        found = deeper
    return [Entry(tuple(float(values[name]) for name in names), path) for path, values in found]


def _list(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as e:
        raise SourceError(f"{directory}: cannot list folder ({e.strerror})") from None
