"""benchmarks/steps.py at a tiny size, so that it cannot rot: every model steps and gets a time."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "steps.py"


def load():
    spec = importlib.util.spec_from_file_location("steps_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_times_each_model_and_names_it(capsys):
    steps = load()
    medians = steps.main(["--size", "32", "--steps", "2", "{c1: 8, c2: 16}", "{c1: 8, c2: 16, min_channels: 8}",
                          "--amp", "off", "bf16"])
    assert [name for name, _ in medians] == ["{c1: 8, c2: 16}", "{c1: 8, c2: 16, min_channels: 8} bf16"]
    assert all(seconds > 0 for _, seconds in medians)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("× 1.00")


def test_steps_refuses_a_bad_model_section():
    with pytest.raises(Exception, match="model.widths: unknown key"):
        load().main(["--size", "32", "--steps", "1", "{widths: 3}"])
