"""File-backed sources: Cinema spec D databases, image folders, and write_cinema."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nervi_hpc.data.sources import Source
from nervi_hpc.data.sources.cinema import CinemaDatabase, write_cinema
from nervi_hpc.data.sources.folder import ImageFolder
from nervi_hpc.errors import SourceError


def write_image(path: Path, size=(8, 8), alpha=False, seed=0, fmt=None):
    """A random RGB(A) image at `path`; returns (rgb, alpha or None) as written."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (*size, 4 if alpha else 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels[..., :3], (pixels[..., 3] if alpha else None)


def make_db(folder: Path, csv_text: str, images=()) -> Path:
    """A Cinema database folder with `data.csv` = csv_text and random 8×8 RGB images."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text(csv_text)
    for seed, name in enumerate(images):
        write_image(folder / name, seed=seed)
    return folder


def raises(match_all: list[str], call, *args, **kwargs) -> str:
    """Call, expect a SourceError whose one-line message contains every fragment; return it."""
    with pytest.raises(SourceError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in match_all:
        assert fragment in message, (fragment, message)
    return message


# ----------------------------------------------------------------------------------------------
# Cinema: good databases


def test_cinema_opens_with_names_params_size_sorted(tmp_path):
    db = make_db(tmp_path / "a.cdb",
                 " t , theta,phi ,FILE,FILE_depth\n"
                 "1,9.5,-10,b.png,no-such-depth.npz\n"
                 "0,90,1e1,a.png,\n"
                 "0,9.0,351,sub/c.png,\n",
                 ["a.png", "b.png", "sub/c.png"])
    source = CinemaDatabase.open(db)
    assert source.names == ("t", "theta", "phi")
    np.testing.assert_array_equal(source.params, [[0, 9, 351], [0, 90, 10], [1, 9.5, -10]])
    assert source.params.dtype == np.float64
    assert source.size == (8, 8) and len(source) == 3 and not source.has_alpha
    assert [Path(f).name for f in source.files] == ["c.png", "a.png", "b.png"]
    assert source.label(0) == str(db / "sub" / "c.png")
    assert str(db) in source.description


def test_cinema_reads_rgb_pixels_exactly(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n2,b.png\n1,a.png\n")
    rgb_a, _ = write_image(db / "a.png", size=(8, 12), seed=1)
    rgb_b, _ = write_image(db / "b.png", size=(8, 12), seed=2)
    source = CinemaDatabase.open(db, background=[255, 255, 255], mask_tolerance=3, mode="ir")
    assert (source.size, source.background, source.mask_tolerance, source.mode) == ((8, 12), (255, 255, 255), 3, "ir")
    rgb, alpha = source.read([1, 0])
    assert alpha is None and rgb.shape == (2, 8, 12, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, [rgb_b, rgb_a])
    assert source.read([])[0].shape == (0, 8, 12, 3)


def test_cinema_reads_rgba_with_straight_alpha(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,b.png\n")
    written = [write_image(db / name, alpha=True, seed=k) for k, name in enumerate(["a.png", "b.png"])]
    source = CinemaDatabase.open(db)
    rgb, alpha = source.read([0, 1])
    assert source.has_alpha
    np.testing.assert_array_equal(rgb, [w[0] for w in written])
    np.testing.assert_array_equal(alpha, [w[1] for w in written])


def test_cinema_reads_jpeg(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.jpg\n")
    write_image(db / "a.jpg", size=(16, 8))
    rgb, alpha = CinemaDatabase.open(db).read([0])
    assert alpha is None
    np.testing.assert_array_equal(rgb[0], np.asarray(Image.open(db / "a.jpg").convert("RGB")))


def test_cinema_accepts_crlf_quotes_blank_lines_absolute_paths_and_file_uris(tmp_path):
    db = tmp_path / "db"
    write_image(tmp_path / "elsewhere.png")
    make_db(db, f'"t",FILE\r\n0,"a.png"\r\n\r\n1,{tmp_path / "elsewhere.png"}\r\n'
                f'2,file://{db / "my%20b.png"}\r\n', ["a.png", "my b.png"])
    source = CinemaDatabase.open(db, allow_outside=True)  # elsewhere.png is outside the database
    assert source.files == (str(db / "a.png"), str(tmp_path / "elsewhere.png"), str(db / "my b.png"))


def test_cinema_source_pickles(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n", ["a.png"])
    source = CinemaDatabase.open(db)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source)).read([0])[0], source.read([0])[0])


# ----------------------------------------------------------------------------------------------
# Cinema: every rule broken once


@pytest.mark.parametrize("csv_text, images, fragments", [
    ("", [], ["data.csv", "empty file"]),
    ("\n", [], ["data.csv line 1", "empty header row"]),
    ("t,FILE\n", [], ["data.csv", "no data rows"]),
    ("t,theta\n0,1\n", [], ["data.csv line 1", "no FILE column"]),
    ("t,FILE,theta\n0,a.png,1\n", ["a.png"], ["line 1", "'theta'", "must be last"]),
    ("FILE\na.png\n", ["a.png"], ["line 1", "no parameter columns"]),
    ("t,t ,FILE\n0,1,a.png\n", ["a.png"], ["line 1", "duplicate column name 't'"]),
    ("t,,FILE\n0,1,a.png\n", ["a.png"], ["line 1", "column 2", "empty name"]),
    ("t,theta,FILE\n0,1,a.png\n0,1\n", ["a.png"], ["data.csv line 3", "2 fields", "3 columns"]),
    ("t,theta,FILE\n0,1,a.png,x\n", ["a.png"], ["data.csv line 2", "4 fields"]),
    ("t,theta,FILE\n0,,a.png\n", ["a.png"], ["data.csv line 2", "empty value", "'theta'"]),
    ("t,theta,FILE\n0,1,a.png\n1,abc,b.png\n", ["a.png", "b.png"], ["line 3", "'theta'", "'abc'"]),
    ("t,FILE\n0,a.png\nNaN,b.png\n", ["a.png", "b.png"], ["line 3", "'t'", "'NaN'", "finite"]),
    ("t,FILE\n1_0,a.png\n", ["a.png"], ["line 2", "'1_0'"]),
    ('t,FILE\n"a\nb",a.png\n', ["a.png"], ["line 2", "'a\\nb'"]),
    ('t,FILE\n0,a.png\n1,"x\ny.png"\n', ["a.png"], ["'", "x\\ny.png", "line 3", "missing"]),
    ('t,FILE\n0,"a\n.png"\n\n1,\n', ["a\n.png"], ["data.csv line 5", "empty FILE value"]),
    ("t,FILE\n0,a.png\n0.0,b.png\n", ["a.png", "b.png"], ["a.png (data.csv line 2)", "b.png (data.csv line 3)",
                                                            "same parameters (t=0)"]),
    ("t,FILE\n0,a.png\n1,missing.png\n", ["a.png"], ["missing.png", "data.csv line 3", "missing"]),
    ("t,FILE\n0,a.png\n1,sub\n", ["a.png", "sub/x.png"], ["sub", "line 3", "not a regular file"]),
    ("t,FILE\n0,\n", [], ["data.csv line 2", "empty FILE value"]),
    ('t,FILE\n0,"a.png"x\n', ["a.png"], ["data.csv line 2", "malformed CSV"]),
    ("t,FILE\n0,https://example.org/a.png\n", [], ["line 2", "remote URI", "https://example.org/a.png"]),
])
def test_cinema_rejects_broken_databases(tmp_path, csv_text, images, fragments):
    db = make_db(tmp_path / "db", csv_text, images)
    raises(fragments, CinemaDatabase.open, db)


def test_cinema_rejects_missing_folder_csv_and_non_utf8(tmp_path):
    raises([str(tmp_path / "nope"), "no such folder"], CinemaDatabase.open, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    raises([str(tmp_path / "empty"), "no data.csv"], CinemaDatabase.open, tmp_path / "empty")
    db = make_db(tmp_path / "db", "", ["a.png"])
    (db / "data.csv").write_bytes(b"t,FILE\n\xff,a.png\n")
    raises(["data.csv", "not UTF-8", "invalid start byte"], CinemaDatabase.open, db)


# ----------------------------------------------------------------------------------------------
# Bad images (shared by every FileSource)


def test_corrupt_first_image_fails_at_open_and_later_one_at_read(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,b.png\n2,c.png\n", ["a.png", "b.png", "c.png"])
    data = (db / "b.png").read_bytes()
    (db / "b.png").write_bytes(data[: len(data) // 2])
    (db / "c.png").write_bytes(np.random.default_rng(0).bytes(200))
    source = CinemaDatabase.open(db)
    raises(["b.png", "corrupt"], source.read, [1])
    raises(["c.png", "corrupt"], source.read, [2])
    (db / "a.png").write_bytes(data[:30])
    raises(["a.png", "corrupt"], CinemaDatabase.open, db)


@pytest.mark.parametrize("pixels, mode", [
    (np.zeros((8, 8), np.uint8), "L"),
    (np.zeros((8, 8), np.uint16), "I;16"),
    (np.zeros((8, 8, 2), np.uint8), "LA"),
])
def test_images_that_are_not_8_bit_rgb_or_rgba_are_rejected(tmp_path, pixels, mode):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,b.png\n", ["a.png"])
    Image.fromarray(pixels).save(db / "b.png")
    raises(["b.png", mode], CinemaDatabase.open(db).read, [1])
    Image.fromarray(pixels).save(db / "a.png")
    raises(["a.png", mode], CinemaDatabase.open, db)


def test_mixed_sizes_name_the_file_and_both_sizes(tmp_path):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,b.png\n", ["a.png"])
    write_image(db / "b.png", size=(8, 16))
    raises(["b.png", "16×8", "a.png", "8×8"], CinemaDatabase.open(db).read, [0, 1])


@pytest.mark.parametrize("first_alpha", [False, True])
def test_mixed_alpha_names_the_file(tmp_path, first_alpha):
    db = make_db(tmp_path / "db", "t,FILE\n0,a.png\n1,b.png\n")
    write_image(db / "a.png", alpha=first_alpha)
    write_image(db / "b.png", alpha=not first_alpha)
    raises(["b.png", "alpha", "a.png"], CinemaDatabase.open(db).read, [0, 1])


# ----------------------------------------------------------------------------------------------
# Image folders


def test_folder_flat_pattern_with_signed_float_and_exponent_values(tmp_path):
    values = {"t0_theta-9_phi1.5.png": (0, -9, 1.5), "t1e-3_theta+2_phi.25.png": (1e-3, 2, 0.25),
              "t-0.5_theta0_phi351.png": (-0.5, 0, 351)}
    for seed, name in enumerate(values):
        write_image(tmp_path / name, seed=seed)
    for ignored in ["t1_theta2_phi3.png.bak", "t1_thetaX_phi3.png", "notes.txt", "t1_theta2_phi3.jpg"]:
        (tmp_path / ignored).write_bytes(b"not an image")
    (tmp_path / "t5_theta5_phi5.png").mkdir()
    source = ImageFolder.open(tmp_path, "t{t}_theta{theta}_phi{phi}.png")
    assert source.names == ("t", "theta", "phi")
    expected = sorted(values.items(), key=lambda item: item[1])
    np.testing.assert_array_equal(source.params, [v for _, v in expected])
    assert source.files == tuple(str(tmp_path / name) for name, _ in expected)
    assert "t{t}_theta{theta}_phi{phi}.png" in source.description
    rgb, _ = source.read([0])
    np.testing.assert_array_equal(rgb[0], np.asarray(Image.open(tmp_path / expected[0][0])))


def test_folder_pattern_with_sub_folders(tmp_path):
    for seed, name in enumerate(["t0/theta9_phi0.png", "t0/theta18_phi0.png", "t2.5/theta9_phi0.png"]):
        write_image(tmp_path / name, seed=seed)
    write_image(tmp_path / "theta9_phi0.png")            # wrong depth
    write_image(tmp_path / "t0" / "x" / "theta1_phi1.png")  # too deep
    write_image(tmp_path / "other" / "theta1_phi1.png")   # folder does not match
    (tmp_path / "t3").write_bytes(b"a file, not a folder")
    source = ImageFolder.open(tmp_path, "t{t}/theta{theta}_phi{phi}.png")
    assert source.names == ("t", "theta", "phi")
    np.testing.assert_array_equal(source.params, [[0, 9, 0], [0, 18, 0], [2.5, 9, 0]])
    assert source.label(2) == str(tmp_path / "t2.5" / "theta9_phi0.png")


def test_folder_duplicate_values_name_both_files(tmp_path):
    write_image(tmp_path / "t1_x2.png")
    write_image(tmp_path / "t01_x2.0.png")
    raises(["t1_x2.png", "t01_x2.0.png", "same parameters (t=1, x=2)"],
           ImageFolder.open, tmp_path, "t{t}_x{x}.png")


@pytest.mark.parametrize("pattern, problem", [
    ("t{t}_u{t}.png", "appears twice"),
    ("t{1t}.png", "not a valid name"),
    ("t{}.png", "not a valid name"),
    ("image.png", "no {name} placeholder"),
    ("t{t}_{x.png", "unmatched"),
    ("t{t}{u}.png", "separated"),
    ("t{t}//u{u}.png", "empty path level"),
    ("/t{t}.png", "empty path level"),
])
def test_folder_rejects_bad_patterns(tmp_path, pattern, problem):
    raises([repr(pattern), problem], ImageFolder.open, tmp_path, pattern)


def test_folder_with_no_match_or_missing_folder(tmp_path):
    write_image(tmp_path / "image.png")
    raises([str(tmp_path), "'t{t}.png'", "no file matches"], ImageFolder.open, tmp_path, "t{t}.png")
    raises([str(tmp_path / "nope"), "no such image folder"], ImageFolder.open, tmp_path / "nope", "t{t}.png")


# ----------------------------------------------------------------------------------------------
# write_cinema


@dataclass
class ArraySource(Source):
    """Images held in arrays; `fail_at` makes reading that index raise; reads are logged."""

    rgb: np.ndarray = None
    alpha: np.ndarray | None = None
    fail_at: int | None = None
    reads: list = None

    def read(self, indices):
        self.reads.append(list(indices))
        if self.fail_at in indices:
            raise SourceError(f"image {self.fail_at} is broken")
        return self.rgb[indices], None if self.alpha is None else self.alpha[indices]


def array_source(params, names=("t", "theta", "phi"), size=(8, 16), alpha=True, fail_at=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(params)
    return ArraySource(names=tuple(names), params=np.array(params, np.float64), size=size, mode="ir",
                       background=None, mask_tolerance=0, description="arrays",
                       rgb=rng.integers(0, 256, (n, *size, 3), dtype=np.uint8),
                       alpha=rng.integers(0, 256, (n, *size), dtype=np.uint8) if alpha else None,
                       fail_at=fail_at, reads=[])


PARAMS = [[0, 9, 351], [1, 1 / 3, -0.1], [0, 9, 0], [-2.5, 1e-7, 1e20],
          [1.0000001, 0, 0], [1.0000002, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize("alpha", [True, False])
def test_write_cinema_round_trip_is_bit_exact(tmp_path, alpha):
    source = array_source(PARAMS, alpha=alpha)
    out = write_cinema(source, tmp_path / "out.cdb", progress=False, batch=3)
    assert out == tmp_path / "out.cdb"
    assert all(len(r) <= 3 for r in source.reads) and sum(source.reads, []) == list(range(len(PARAMS)))
    back = CinemaDatabase.open(out)
    order = sorted(range(len(PARAMS)), key=lambda i: tuple(PARAMS[i]))
    assert back.names == source.names and back.size == source.size and back.has_alpha == alpha
    np.testing.assert_array_equal(back.params, source.params[order])  # exact floats, no tolerance
    rgb, back_alpha = back.read(range(len(back)))
    np.testing.assert_array_equal(rgb, source.rgb[order])
    if alpha:
        np.testing.assert_array_equal(back_alpha, source.alpha[order])
    else:
        assert back_alpha is None
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == len(PARAMS) + 1 and "t0_theta9_phi351.png" in files
    assert "data.csv" in files and {"t1_theta0_phi0.png", "t1_theta0_phi0_1.png", "t1_theta0_phi0_2.png"} <= set(files)


def test_write_cinema_replaces_an_existing_database_and_shows_progress(tmp_path, capsys):
    out = tmp_path / "out.cdb"
    write_cinema(array_source([[0, 0, 0], [1, 0, 0]], seed=1), out, progress=False)
    assert capsys.readouterr() == ("", "")
    (out / "stale.txt").write_text("left from before")
    source = array_source([[5, 0, 0]], seed=2)
    write_cinema(source, out)
    shown = capsys.readouterr().err  # on stderr, as every progress bar (progress.progress_bar)
    assert "writing out.cdb" in shown and "1/1" in shown
    assert sorted(p.name for p in out.iterdir()) == ["data.csv", "t5_theta0_phi0.png"]
    np.testing.assert_array_equal(CinemaDatabase.open(out).read([0])[0], source.rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.cdb"]


def test_write_cinema_failing_midway_leaves_nothing_or_the_old_database(tmp_path):
    out = tmp_path / "out.cdb"
    raises(["image 4 is broken"], write_cinema, array_source(PARAMS, fail_at=4), out, progress=False, batch=2)
    assert list(tmp_path.iterdir()) == []
    old = array_source([[0, 0, 0]], seed=3)
    write_cinema(old, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    raises(["image 4 is broken"], write_cinema, array_source(PARAMS, fail_at=4), out, progress=False, batch=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.cdb"]


def test_write_cinema_sanitises_names_and_refuses_file_parameters(tmp_path):
    source = array_source([[1, 2]], names=("time step", "iso/value"))
    out = write_cinema(source, tmp_path / "a.cdb", progress=False)
    assert (out / "time-step1_iso-value2.png").is_file()
    assert CinemaDatabase.open(out).names == ("time step", "iso/value")
    raises(["'FILE_id'", "FILE"], write_cinema, array_source([[1, 2]], names=("t", "FILE_id")),
           tmp_path / "b.cdb", progress=False)
    assert not (tmp_path / "b.cdb").exists()
