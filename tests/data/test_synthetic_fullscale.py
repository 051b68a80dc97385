"""conf/fullscale: Ali-CCP's published shape, valid through the project's loader, and its world
keeping that shape when scaled down."""

from __future__ import annotations

from pathlib import Path

import yaml
from kedro.config import OmegaConfigLoader

from rec_pipeline.config import load_config
from rec_pipeline.data import synthetic as syn
from rec_pipeline.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[2] / "conf"
# Sections a full-size run leaves to conf/base: the training recipe.
RECIPE = ("esmm", "embedding", "model", "optim", "loss", "vocab", "sampling")


def parameters(env: str) -> dict:
    loader = OmegaConfigLoader(
        str(CONF),
        base_env="base",
        default_run_env=env,
        merge_strategy=CONFIG_LOADER_ARGS["merge_strategy"],
    )
    return loader["parameters"]


def test_fullscale_environment_is_aliccp_shaped_and_keeps_the_recipe():
    config = load_config(parameters("fullscale"))
    base = load_config(parameters("base"))
    s = config.synthetic
    assert (s.n_train_rows, s.n_test_rows) == (42_300_000, 43_000_000)
    assert (s.n_users, s.n_items) == (400_000, 4_300_000)
    assert 720_000 < s.n_train_rows / s.impressions_per_common < 740_000
    assert s.ctr_rate == 0.039 and abs(s.ctr_rate * s.cvr_rate - 0.0002) < 0.00001
    assert s.workers == "auto" and config.data.workers == "auto"
    for section in RECIPE:
        assert getattr(config, section) == getattr(base, section), section
    # its artefacts live apart from the embedded world's
    globals_ = yaml.safe_load((CONF / "fullscale" / "globals.yml").read_text())
    assert globals_ == {
        "data_root": "data/fullscale",
        "raw_dir": "data/fullscale/01_raw/aliccp_synthetic",
    }


def test_fullscale_world_scaled_down_keeps_its_shape(tmp_path):
    full = load_config(parameters("fullscale")).synthetic.build()
    scale = {
        k: getattr(full, k) // 1000 for k in ("n_train_rows", "n_test_rows", "n_users", "n_items")
    }
    summary = syn.write_synthetic(tmp_path, syn.SyntheticConfig(**{**full.to_dict(), **scale}))
    for split in summary.splits.values():
        assert 50 < split.rows / split.common_records < 66
        assert 0.8 < split.mean_p_ctr / full.ctr_rate < 1.2
        # shorter lists than at full size: a record's distinct entities grow with the catalogue
        assert 250 < sum(split.behaviour_list_mean.values()) < 600
    assert summary.rows == {"train": 42_300, "test": 43_000}
