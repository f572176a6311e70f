"""Untrusted render inputs and specs (issue 16): decompression bombs, NUL bytes, unbounded grids,
YAML alias bombs, a bad `model:` section, Cinema FILE values outside the database, and ingest
workers that outlive a killed parent. Each gets one line before any heavy work."""

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from tests.data.test_sources import make_db
from tests.codec.test_untrusted import deadline

from nervi_hpc.cli import main
from nervi_hpc.config import load_dataset
from nervi_hpc.data.sources import open_source
from nervi_hpc.data.sources.cinema import CinemaDatabase
from nervi_hpc.errors import ConfigError, SourceError


def png_header_only(path, width, height):
    """A PNG of a few bytes whose header declares width × height RGB pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_line(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,bomb.png\n")
    png_header_only(db / "bomb.png", 100_000, 100_000)
    with deadline(5), pytest.raises(SourceError, match=r"bomb.png: corrupt or unreadable image \(Image size "
                                                       r"\(10000000000 pixels\) exceeds limit"):
        CinemaDatabase.open(db)


def test_a_nul_byte_in_a_file_value_is_one_line(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,\"b\0.png\"\n", ["a.png"])
    with pytest.raises(SourceError, match=r"data.csv line 3: FILE value 'b\\x00.png' holds a NUL byte"):
        CinemaDatabase.open(db)


def spec(tmp_path, text, name="dataset.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_an_unbounded_grid_is_refused_before_it_is_built(tmp_path):
    path = spec(tmp_path, """\
        name: big
        source: {kind: synthetic, t: {start: 0, stop: 1.0e+12, step: 1}}
        """)
    with deadline(0.5), pytest.raises(ConfigError, match=r"source.t: \{start: 0, stop: 1e\+12, step: 1\} has "
                                                         r"1,000,000,000,001 values \(at most 1,000,000\)"):
        load_dataset(path)
    product = spec(tmp_path, """\
        name: big
        source: {kind: synthetic, t: {start: 0, stop: 199, step: 1}, theta: {start: 0, stop: 199, step: 1},
                 phi: {start: 0, stop: 299, step: 1}}
        """)
    with deadline(2), pytest.raises(ConfigError, match=r"t × theta × phi is 12,000,000 images \(at most 10,000,000\)"):
        open_source(load_dataset(product).source)


BOMB = """\
    name: bomb
    source: {kind: synthetic}
    model:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
    """


def test_a_yaml_alias_bomb_is_refused_at_load(tmp_path, capsys):
    path = spec(tmp_path, BOMB)
    assert path.stat().st_size < 700
    with deadline(5), pytest.raises(ConfigError, match=r"dataset.yaml: expands to 1,234,567,917 values through "
                                                       r"YAML aliases \(at most 100,000 values\); is it an alias bomb"):
        load_dataset(path)
    looped = spec(tmp_path, "name: loop\nsource: {kind: synthetic}\nmodel: &m {c1: *m}\n", "loop.yaml")
    with pytest.raises(ConfigError, match=r"loop.yaml: expands endlessly \(an alias inside itself\)"):
        load_dataset(looped)
    with deadline(10):
        assert main(["submit", str(path), "--dry-run"]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_model_section_is_checked_at_load(tmp_path, capsys):
    for model, message in [("{bogus: 1}", r"model.bogus: unknown key 'bogus'"),
                           ("{grid_levels: 1000000}", r"model.grid_levels: bad value 1000000"),
                           ("{preset: huge}", r"model.preset: unknown preset 'huge'")]:
        path = spec(tmp_path, f"name: m\nsource: {{kind: synthetic}}\nmodel: {model}\n")
        with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
            load_dataset(path)
    assert main(["ingest", str(path), "-o", str(tmp_path / "renders.zarr"), "-q"]) == 1
    assert "model.preset: unknown preset 'huge'" in capsys.readouterr().err
    assert load_dataset(spec(tmp_path, "name: m\nsource: {kind: synthetic}\nmodel: {preset: paper, c1: 64}\n"))


def test_cinema_files_stay_inside_the_database_unless_allowed(tmp_path, capsys):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,../secret.png\n")
    for path in (db / "a.png", tmp_path / "secret.png"):
        Image.new("RGB", (8, 8), "white").save(path)
    with pytest.raises(SourceError, match=r"data.csv line 3: FILE value '../secret.png' lies outside the "
                                          r"database folder .*db; to read it anyway, pass --allow-outside"):
        CinemaDatabase.open(db)
    (db / "data.csv").write_text(f"t,FILE\n0,a.png\n1,{tmp_path / 'secret.png'}\n")
    with pytest.raises(SourceError, match="lies outside the database folder"):
        CinemaDatabase.open(db)
    os.symlink(tmp_path / "secret.png", db / "link.png")  # inside by name, outside once resolved
    (db / "data.csv").write_text("t,FILE\n0,a.png\n1,link.png\n")
    with pytest.raises(SourceError, match="'link.png' lies outside"):
        CinemaDatabase.open(db)
    store = tmp_path / "renders.zarr"
    assert main(["ingest", str(db), "-o", str(store), "-q"]) == 1
    assert "--allow-outside" in capsys.readouterr().err
    assert main(["ingest", str(db), "-o", str(store), "-q", "--allow-outside", "--workers", "1"]) == 0


SLOW_SOURCE = """\
import time
import numpy as np
from nervi_hpc.data.sources import Source

class Slow(Source):
    def read(self, indices):
        time.sleep(0.2)
        return np.zeros((len(indices), 8, 8, 3), np.uint8), None
"""

INGEST = """\
import sys
import numpy as np
from slow_source import Slow
from nervi_hpc.stages.ingest.run import ingest

if __name__ == "__main__":  # the pool's spawned workers import this file too
    source = Slow(names=("t",), params=np.arange(200.0)[:, None], size=(8, 8), mode="ir",
                  background=(255, 255, 255), mask_tolerance=0, description="slow")
    ingest(source, sys.argv[1], shard_size=1, workers=2, progress=False)
"""


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ingest_workers_die_with_their_parent(tmp_path):
    (tmp_path / "slow_source.py").write_text(SLOW_SOURCE)
    (tmp_path / "run_ingest.py").write_text(INGEST)
    main_process = subprocess.Popen([sys.executable, str(tmp_path / "run_ingest.py"), str(tmp_path / "r.zarr")],
                                    cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers = []
    try:
        started = time.monotonic()
        while not list((tmp_path / "r.zarr.partial" / ".ingest").glob("shard-*.done")):
            assert time.monotonic() - started < 60 and main_process.poll() is None
            time.sleep(0.1)
        workers = [pid for pid in children(main_process.pid)
                   if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
        assert len(workers) == 2
        main_process.send_signal(signal.SIGKILL)
        main_process.wait()
        killed = time.monotonic()
        while any(map(alive, workers)) and time.monotonic() - killed < 10:
            time.sleep(0.1)
        assert not any(map(alive, workers))
        assert time.monotonic() - killed < 3  # the watchdog looks every 0.5 s
    finally:
        main_process.kill()
        for pid in filter(alive, workers):  # only where the watchdog failed
            os.kill(pid, signal.SIGKILL)
