"""The command line: render → ingest glue, --mode, one-line errors with exit status 1."""

from pathlib import Path

from nervi_hpc.cli import main
from nervi_hpc.data.sources.cinema import write_cinema
from tests.scenes import DiskScene
from nervi_hpc.data.store import RenderStore

REPO = Path(__file__).resolve().parents[1]


def test_ingest_of_a_cinema_database_records_the_mode_given(tmp_path):
    write_cinema(DiskScene.grid(size=16), tmp_path / "db.cdb", progress=False)
    assert main(["ingest", str(tmp_path / "db.cdb"), "-o", str(tmp_path / "r.zarr"), "--mode", "dvr", "-q"]) == 0
    store = RenderStore.open(tmp_path / "r.zarr")
    assert store.mode == "dvr" and store.count == 16


def test_errors_are_one_line_with_exit_status_1(tmp_path, capsys):
    assert main(["ingest", str(REPO / "jobs/examples/demo.yaml"), "-o", str(tmp_path / "x.zarr"),
                 "--mode", "ir"]) == 1
    assert main(["ingest", str(tmp_path / "nothing"), "-o", str(tmp_path / "y.zarr")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "set source.mode in the dataset.yaml" in lines[0]
    assert lines[1].startswith("nervi-hpc ingest: error:") and "nothing" in lines[1]
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
