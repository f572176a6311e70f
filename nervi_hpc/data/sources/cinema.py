"""Cinema databases (spec D v1.1): read one as a Source, write any Source as one.

A database is a folder holding `data.csv` (UTF-8, RFC 4180, one header row): parameter columns
first, then one or more FILE columns (named `FILE` or starting with `FILE`) whose values are
image paths relative to the folder (absolute paths and file:// URIs also work). A database is
untrusted input: its images must lie inside its folder (symbolic links resolved) unless the
user opts in with `allow_outside`, so that a received database cannot pull in other files.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from urllib.parse import unquote, urlparse


from ...atomic import atomic_path
from ...progress import progress_bar
from ...errors import SourceError
from ..imaging import write_png
from . import Source
from .files import NUMBER, Entry, FileSource

CSV_NAME = "data.csv"
FILE_PREFIX = "FILE"


class CinemaDatabase(FileSource):
    """The images of a Cinema spec D database, one per data row.

    Parameters are the columns before the first FILE column and must be numeric (every value a
    finite number; whitespace around a value is ignored). The first FILE column names the image
    (PNG or JPEG, RGB or RGBA); further FILE columns (depth maps, other layers) are ignored.
    Blank lines are skipped. Anything else the spec forbids, or that leaves a row without a
    usable image or parameters, raises SourceError naming data.csv and the line.
    """

    @classmethod
    def open(cls, path, *, background=None, mask_tolerance: int = 0, mode: str = "unknown",
             allow_outside: bool = False) -> "CinemaDatabase":
        folder = Path(path)
        if not folder.is_dir():
            raise SourceError(f"{folder}: no such folder (expected a Cinema database)")
        csv_path = folder / CSV_NAME
        if not csv_path.is_file():
            raise SourceError(f"{folder}: no {CSV_NAME} (not a Cinema database)")
        names, entries = _read_csv(csv_path, None if allow_outside else folder.resolve())
        return cls.from_entries(names, entries, description=f"Cinema database {folder}",
                                background=background, mask_tolerance=mask_tolerance, mode=mode)


def _read_csv(csv_path: Path, inside: Path | None) -> tuple[list[str], list[Entry]]:
    """Parameter names and one Entry per data row of a spec D `data.csv`; every image must lie
    inside the folder `inside` (None: anywhere)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            try:
                header = next(reader, None)
                if header is None:
                    raise SourceError(f"{csv_path}: empty file (no header row)")
                names, file_column = _parse_header(csv_path, header)
                entries, end = [], reader.line_num
                for row in reader:  # a quoted value may span lines: report where the row starts
                    start, end = end + 1, reader.line_num
                    if row:
                        entries.append(_parse_row(csv_path, start, row, names, file_column, inside))
            except csv.Error as e:
                raise SourceError(f"{csv_path} line {reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{csv_path}: not UTF-8 text ({e.reason})") from None
    if not entries:
        raise SourceError(f"{csv_path}: no data rows (only a header)")
    return names[:file_column], entries


def _parse_header(csv_path: Path, header: list[str]) -> tuple[list[str], int]:
    """Column names (stripped) and the index of the first FILE column."""
    names = [name.strip() for name in header]
    if not names:
        raise SourceError(f"{csv_path} line 1: empty header row")
    for k, name in enumerate(names):
        if not name:
            raise SourceError(f"{csv_path} line 1: column {k + 1} has an empty name")
        if name in names[:k]:
            raise SourceError(f"{csv_path} line 1: duplicate column name {name!r}")
    file_columns = [k for k, name in enumerate(names) if name.startswith(FILE_PREFIX)]
    if not file_columns:
        raise SourceError(f"{csv_path} line 1: no FILE column (the image paths go in a last "
                          f"column named FILE or starting with FILE)")
    first = file_columns[0]
    for name in names[first:]:
        if not name.startswith(FILE_PREFIX):
            raise SourceError(f"{csv_path} line 1: column {name!r} comes after FILE column "
                              f"{names[first]!r}; FILE columns must be last")
    if first == 0:
        raise SourceError(f"{csv_path} line 1: no parameter columns before {names[0]!r}")
    return names, first


def _parse_row(csv_path: Path, line: int, row: list[str], names: list[str], file_column: int,
               inside: Path | None) -> Entry:
    where = f"{csv_path} line {line}"
    if len(row) != len(names):
        raise SourceError(f"{where}: {len(row)} fields, but the header has {len(names)} columns")
    params = []
    for name, text in zip(names[:file_column], row):
        if not text.strip():
            raise SourceError(f"{where}: empty value in parameter column {name!r}")
        value = float(text) if re.fullmatch(NUMBER, text.strip()) else math.nan
        if not math.isfinite(value):
            raise SourceError(f"{where}: parameter column {name!r} has value {text!r}, not a "
                              f"finite number (parameters must be numeric)")
        params.append(value)
    path = _image_path(csv_path.parent, row[file_column], where, names[file_column])
    if inside is not None and not Path(path).resolve().is_relative_to(inside):
        raise SourceError(f"{where}: {names[file_column]} value {row[file_column][:200]!r} lies outside the "
                          f"database folder {inside}; to read it anyway, pass --allow-outside "
                          f"(or set source.allow_outside: true)")
    return Entry(tuple(params), path, f"{CSV_NAME} line {line}")


def _image_path(folder: Path, value: str, where: str, column: str) -> str:
    """The local file a FILE value names: a path relative to `folder`, absolute, or file://."""
    if not value:
        raise SourceError(f"{where}: empty {column} value (no image for this row)")
    if "\0" in value:
        raise SourceError(f"{where}: {column} value {value[:200]!r} holds a NUL byte (not a file name)")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        uri = urlparse(value)
        if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
            raise SourceError(f"{where}: {column} value {value!r} is a remote URI; "
                              f"only local paths and file:// URIs are supported")
        value = unquote(uri.path)
    return str(folder / value)


def write_cinema(source: Source, out_dir, progress: bool = True, batch: int = 32) -> Path:
    """Write `source` as a Cinema spec D database at `out_dir`, replacing any there.

    `data.csv` holds the parameter columns (as shortest round-trip floats, so reading back is
    exact) then FILE; images are PNGs (RGBA with straight alpha when the source has alpha, else
    RGB) named after their parameters, e.g. `t0_theta9_phi351.png`. Images are read `batch` at a
    time. The database is built in a temporary sibling folder and renamed into place, so a
    failure leaves `out_dir` as it was.
    """
    out_dir = Path(out_dir)
    for name in source.names:
        if name.strip().startswith(FILE_PREFIX):
            raise SourceError(f"{out_dir}: parameter {name!r} cannot be written to a Cinema "
                              f"database (columns starting with FILE hold file paths)")
    file_names = _file_names(source)
    with atomic_path(out_dir, directory=True) as tmp, \
            progress_bar(progress) as bar:
        task = bar.add_task(f"writing {out_dir.name}", total=len(source))
        for start in range(0, len(source), batch):
            indices = list(range(start, min(start + batch, len(source))))
            rgbs, alphas = source.read(indices)
            for k, index in enumerate(indices):
                write_png(tmp / file_names[index], rgbs[k], None if alphas is None else alphas[k])
            bar.advance(task, len(indices))
        with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([*source.names, FILE_PREFIX])
            writer.writerows([*map(repr, row), name] for row, name in zip(source.params.tolist(), file_names))
    return out_dir


def _file_names(source: Source) -> list[str]:
    """One distinct PNG name per image, built from its parameters (`name` + value, `:g`);
    names that `:g` rounds together get a `_1`, `_2`, … suffix."""
    safe_names = [re.sub(r"[^A-Za-z0-9_.+-]", "-", name) for name in source.names]
    stems = ["_".join(f"{n}{v:g}" for n, v in zip(safe_names, row)) for row in source.params]
    taken, used, names = set(stems), set(), []
    for stem in stems:
        name = stem
        if name in used:
            suffix = 1
            while f"{stem}_{suffix}" in taken:
                suffix += 1
            name = f"{stem}_{suffix}"
            taken.add(name)
        used.add(name)
        names.append(f"{name}.png")
    return names
