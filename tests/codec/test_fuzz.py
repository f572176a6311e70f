"""A few hundred seeded damaged and forged archives (benchmarks/fuzz.py's generator), each opened
and decoded by a sandboxed process under a memory limit and a time bound: every one must end in
a one-line ArchiveError naming the file or a finite decode (bit-identical for harmless edits)."""

import importlib.util
import sys
import time
from collections import Counter
from pathlib import Path

spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).parents[2] / "benchmarks" / "fuzz.py")
fuzz = importlib.util.module_from_spec(spec)
sys.modules["fuzz"] = fuzz  # dataclasses look their module up there
spec.loader.exec_module(fuzz)


def test_forged_archives_end_clean_within_bounded_time_and_memory(tmp_path):
    started = time.perf_counter()
    results = fuzz.fuzz(300, seed=16, timeout=10, memory_mb=2048, budget_mb=512, folder=tmp_path)
    assert time.perf_counter() - started < 60
    failures = [f"{outcome}: {kind}: {how}" for kind, outcome, how in results if outcome != "clean"]
    assert failures == []
    hows = Counter(how for _, _, how in results)
    assert hows["refused"] > 150 and hows["identical"] > 0 and hows["decoded"] > 0  # all three paths ran
    assert any(kind.startswith("damage") for kind, _, _ in results)
    assert any("refit" in kind for kind, _, _ in results)
