"""dataset.yaml / cluster.yaml: strict loading, grids, one-line errors; atomic writes."""

import os
from pathlib import Path

import pytest

from nervi_hpc import atomic
from nervi_hpc.config import (CinemaSource, ClusterConfig, DatasetSpec, SyntheticSource, load_cluster,
                              load_dataset)
from nervi_hpc.errors import ConfigError, NerviError
from nervi_hpc.schema import Grid, build, to_dict

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="dataset.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text, loader=load_dataset) -> str:
    with pytest.raises(ConfigError) as info:
        loader(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "jobs" / "examples").glob("*.yaml")))
def test_every_example_spec_loads(name):
    spec = load_dataset(REPO / "jobs" / "examples" / name)
    assert isinstance(spec, DatasetSpec) and spec.name


def test_tornado_example_is_the_paper_grid():
    spec = load_dataset(REPO / "jobs" / "examples" / "tornado-ir.yaml")
    src = spec.source
    assert isinstance(src, SyntheticSource) and src.size == (256, 256) and src.mode == "ir"
    assert src.theta.values == tuple(float(v) for v in range(0, 172, 9))
    assert src.phi.values[0] == 0 and src.phi.values[-1] == 351 and len(src.phi.values) == 40
    assert len(src.t.values) * len(src.theta.values) * len(src.phi.values) == 800


def test_shipped_cluster_yaml_has_local_default_and_slurm_example():
    cfg = load_cluster(REPO / "cluster.yaml")
    assert cfg.default_profile == "local" and cfg.profile().executor == "local"
    slurm = cfg.profile("slurm")
    assert slurm.executor == "slurm" and slurm.gpus_per_node > 0 and slurm.setup
    assert Path(cfg.storage_root).is_absolute()


def test_unknown_key_names_itself_and_lists_valid_ones(tmp_path):
    msg = error_of(tmp_path, "name: x\nsource: {kind: synthetic, scen: tornado}\n")
    assert "source.scen" in msg and "'scen'" in msg and "scene" in msg and "theta" in msg
    msg = error_of(tmp_path, "name: x\nsource: {kind: synthetic}\nbogus: 1\n")
    assert "bogus" in msg and "valid: name, source, ingest, model, train" in msg


@pytest.mark.parametrize("text, field, value", [
    ("name: x\nsource: {kind: synthetic, size: [0, 5]}", "source.size", "[0, 5]"),
    ("name: x\nsource: {kind: synthetic, mode: mri}", "source.mode", "'mri'"),
    ("name: x\nsource: {kind: synthetic, volume: many}", "source.volume", "'many'"),
    ("name: x\nsource: {kind: synthetic, t: [1, a]}", "source.t[1]", "'a'"),
    ("name: x\nsource: {kind: synthetic, theta: {start: 0, stop: 9, step: 0}}", "source.theta.step", "0"),
    ("name: x\nsource: {kind: cinema, path: d, background: [255, 255, 300]}", "source.background", "300"),
    ("name: x\nsource: {kind: warp}", "source.kind", "'warp'"),
    ("name: 'a/b'\nsource: {kind: synthetic}", "name", "'a/b'"),
    ("name: x\nsource: {kind: synthetic}\ningest: {workers: 0}", "ingest.workers", "0"),
    ("name: x\nsource: {kind: synthetic}\ningest: {workers: true}", "ingest.workers", "True"),
])
def test_bad_value_names_field_and_value(tmp_path, text, field, value):
    msg = error_of(tmp_path, text)
    assert f"{field}:" in msg and value in msg and str(tmp_path) in msg


def test_missing_required_and_malformed_yaml(tmp_path):
    assert "source: missing" in error_of(tmp_path, "name: x\n")
    assert "source.path: missing" in error_of(tmp_path, "name: x\nsource: {kind: cinema}\n")
    assert "malformed YAML at line" in error_of(tmp_path, "name: x\nsource: [kind\n")
    assert "expected a mapping" in error_of(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_dataset(tmp_path / "absent.yaml")


def test_grids_from_number_list_and_range():
    assert Grid.parse(3, "t").values == (3.0,)
    assert Grid.parse([9, 0, 4.5], "t").values == (0.0, 4.5, 9.0)
    assert Grid.parse({"start": 0, "stop": 337.5, "step": 22.5}, "phi").values[-1] == 337.5
    assert len(Grid.parse({"start": 0, "stop": 350, "step": 9}, "phi").values) == 39
    with pytest.raises(ConfigError, match="repeated"):
        Grid.parse([1, 1], "t")
    with pytest.raises(ConfigError, match="stop 0.0 < start 5.0"):
        Grid.parse({"start": 5, "stop": 0, "step": 1}, "t")


def test_scalar_size_means_square_and_relative_paths_resolve(tmp_path):
    spec = load_dataset(write(tmp_path, "name: x\nsource: {kind: synthetic, size: 64}\n"))
    assert spec.source.size == (64, 64)
    spec = load_dataset(write(tmp_path, "name: x\nsource: {kind: cinema, path: renders.cdb}\n"))
    assert isinstance(spec.source, CinemaSource) and spec.source.path == str(tmp_path / "renders.cdb")


def test_to_dict_round_trips():
    spec = load_dataset(REPO / "jobs" / "examples" / "demo.yaml")
    assert build(DatasetSpec, to_dict(spec)) == spec


def test_cluster_profiles_validate(tmp_path):
    msg = error_of(tmp_path, "profiles: {gpu: {executor: slurm, nodes: -1}}\ndefault_profile: gpu\n",
                   load_cluster)
    assert "profiles.gpu.nodes" in msg and "-1" in msg
    msg = error_of(tmp_path, "default_profile: big\n", load_cluster)
    assert "'big'" in msg and "local" in msg
    cfg = load_cluster(write(tmp_path, "storage_root: /scratch/me\n", "cluster.yaml"))
    assert cfg.storage_root == "/scratch/me" and cfg.profile().executor == "local"
    with pytest.raises(ConfigError, match="unknown profile 'x'"):
        ClusterConfig().profile("x")


def test_errors_are_also_builtin_value_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, NerviError)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_json(target, {"b": 2})
    assert target.read_text().strip().startswith("{") and '"b": 2' in target.read_text()
    assert sorted(os.listdir(target.parent)) == ["m.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_atomic_path_keeps_old_content_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_directory_replaces_existing_folder(tmp_path):
    target = tmp_path / "db"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic.atomic_path(target, directory=True) as tmp:
        (tmp / "new").write_text("y")
    assert os.listdir(target) == ["new"] and os.listdir(tmp_path) == ["db"]


def test_a_value_fitting_no_option_of_a_union_names_every_option(tmp_path):
    msg = error_of(tmp_path, "profiles: {local: {gpus_per_node: x}}\n", load_cluster)
    assert "profiles.local.gpus_per_node: bad value 'x'" in msg and "an integer" in msg and "auto" in msg
