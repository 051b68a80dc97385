"""The generator never overwrites a folder it did not write, and skips its own."""

from __future__ import annotations

import pytest
from kedro_project import TINY, run  # noqa: E402
from raw_files import SKELETON, write_raw


@pytest.mark.slow
def test_generator_refuses_to_overwrite_foreign_files(project):
    raw = project / "user_raw"
    write_raw(raw)
    with pytest.raises(Exception, match="refusing to overwrite"):
        run(project, "data_generation", {**TINY, "raw_dir": str(raw)})
    assert "train0000" in (raw / SKELETON.format("train")).read_text()


@pytest.mark.slow
def test_generator_skips_its_own_identical_files(project):
    run(project, "data_generation")
    raw = project / "data/01_raw/aliccp_synthetic"
    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    run(project, "data_generation")
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp
