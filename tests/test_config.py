"""One source of truth for parameters: defaults, the base file, the real-data recipe, the
accepted-but-ignored keys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro_project import deep_merge

from rec_pipeline.config import (
    FLAT_BACKBONE_KEYS,
    IGNORED_KEYS,
    Config,
    ConfigError,
    ignored_keys,
    load_config,
)
from rec_pipeline.settings import CONFIG_LOADER_ARGS

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path(__file__).parent / "fixtures" / "source_recipe.yml"
TASKS = ("ctr", "cvr")


def resolved(cfg: Config) -> dict:
    """Everything a run uses, with each task's tower settings resolved."""
    out = cfg.model_dump(by_alias=True)
    out["model"]["heads"] = {t: cfg.model.heads.for_task(t).model_dump() for t in TASKS}
    for key in FLAT_BACKBONE_KEYS:  # folded into model.backbone
        out["model"].pop(key)
    return out


def env_parameters(env: str) -> dict:
    loader = OmegaConfigLoader(
        str(ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        merge_strategy=CONFIG_LOADER_ARGS["merge_strategy"],
    )
    return loader["parameters"]


def test_base_file_shows_the_defaults():
    base = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())
    got, defaults = resolved(load_config(base)), resolved(Config())
    assert got == defaults


def test_real_data_environment_is_the_source_recipe():
    """base + conf/aliccp's overrides = the recipe, with the source's behaviour for the keys
    that the recipe predates."""
    predates = {
        "embedding": {"weight_channel": "none", "l2_reg": 0.0},
        "model": {
            "backbone": {"wide_per_task": False},
            "heads": {"default": {"extra_inputs": []}, "cvr": {"dropout": 0.1}},
        },
        "runtime": {"valid_every": None, "best_metric": "auc_primary"},
        "optim": {"sparse": {"type": "adam"}},
        "data": {"neg_keep_at_least": None},
    }
    recipe = deep_merge(yaml.safe_load(RECIPE.read_text()), predates)
    got, want = resolved(load_config(env_parameters("aliccp"))), resolved(load_config(recipe))
    for key in IGNORED_KEYS:  # no effect either way; left out of conf/aliccp
        section, *rest = key.split(".")
        if section == "data":
            got["data"].pop(rest[0]), want["data"].pop(rest[0])
    got.pop("synthetic"), want.pop("synthetic")
    assert got == want


def test_ignored_keys_are_named():
    recipe = yaml.safe_load(RECIPE.read_text())
    named = ignored_keys(recipe)
    assert named[: len(IGNORED_KEYS)] == list(IGNORED_KEYS)
    # The recipe's flat backbone keys sit next to model.backbone, which overrides them.
    assert named[len(IGNORED_KEYS) :] == [f"model.{k}" for k in FLAT_BACKBONE_KEYS]
    assert ignored_keys(yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())) == []
    assert ignored_keys({"model": {"deep_hidden_dims": [8]}}) == []  # no backbone: they act


def test_ignored_keys_warning_is_logged_once(caplog):
    from rec_pipeline.hooks import ValidateParametersHook

    class Catalog:
        def load(self, name):
            assert name == "parameters"
            return {"data": {"num_workers": 6}, "model": {"mtl": "mmoe"}}

    with caplog.at_level(logging.WARNING):
        ValidateParametersHook().before_pipeline_run({}, None, Catalog())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "data.num_workers" in warnings[0].message and "model.mtl" in warnings[0].message


def test_flat_backbone_keys_fill_a_missing_backbone_only():
    flat = load_config({"model": {"deep_hidden_dims": [32, 16], "out_dim": 24}})
    assert flat.model.backbone.deep_hidden_dims == [32, 16] and flat.model.backbone.out_dim == 24
    assert flat.model.backbone.wide_per_task == Config().model.backbone.wide_per_task
    both = load_config({"model": {"deep_hidden_dims": [32], "backbone": {"out_dim": 8}}})
    assert both.model.backbone.deep_hidden_dims == Config().model.backbone.deep_hidden_dims
    with pytest.raises(ConfigError, match="model.backbone.out_dim"):
        load_config({"model": {"out_dim": 0}})


def test_head_settings_resolve_task_over_default_over_tower_defaults():
    cfg = load_config(
        {
            "model": {
                "heads": {"default": {"dropout": 0.3, "mlp_dims": [64]}, "cvr": {"dropout": 0.0}}
            }
        }
    )
    ctr, cvr = cfg.model.heads.for_task("ctr"), cfg.model.heads.for_task("cvr")
    assert (ctr.dropout, ctr.mlp_dims, ctr.activation) == (0.3, [64], "relu")
    assert (cvr.dropout, cvr.mlp_dims) == (0.0, [64])
    assert Config().model.heads.for_task("cvr").dropout == 0.5  # the measured default
    with pytest.raises(ConfigError, match="model.heads.ctcvr"):
        load_config({"model": {"heads": {"ctcvr": {}}}})


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"backbone": {"fm_enabled": False, "per_head_add": {}}}, "model.mmoe.add_fm_vec"),
        (
            {
                "backbone": {"fm_enabled": False, "per_head_add": {"ctr": {"use_fm": True}}},
                "mmoe": {"add_fm_vec": False},
            },
            "model.backbone.per_head_add",
        ),
        (
            {
                "backbone": {"fm_enabled": False, "per_head_add": {}},
                "mmoe": {"add_fm_vec": False},
                "heads": {"cvr": {"extra_inputs": ["fm_vec"]}},
            },
            "model.heads.cvr.extra_inputs",
        ),
        ({"backbone": {"return_logit_parts": False}}, "model.backbone.return_logit_parts"),
        ({"backbone": {"use_legacy_pseudo_deepfm": True}}, "model.backbone.per_head_add"),
    ],
)
def test_model_settings_that_contradict_each_other_fail_before_any_work(model, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        load_config({"model": model})


@pytest.mark.parametrize("env", ["base", "aliccp", "world2", "fullscale"])
def test_the_benchmarks_merge_conf_environments_as_kedro_does(env):
    """benchmarks.conf.parameters (for machines without Kedro) = Kedro's soft merge."""
    from benchmarks.conf import parameters

    assert parameters(env) == env_parameters(env)


@pytest.mark.parametrize(
    ("given", "expected"), [("off", "off"), (False, "off"), (True, "dense"), ("auto", "auto")]
)
def test_runtime_compile_reads_yaml_booleans(given, expected):
    """YAML reads an unquoted ``compile: off`` as false: it means off, not an error."""
    assert load_config({"runtime": {"compile": given}}).runtime.compile == expected


def test_a_wrong_runtime_compile_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"runtime\.compile.*'auto', 'dense' or 'off'"):
        load_config({"runtime": {"compile": "fast"}})


def test_value_vectors_must_name_configured_fields():
    with pytest.raises(ConfigError, match=r"embedding\.value_vectors.*f0_999"):
        load_config({"embedding": {"value_vectors": ["f0_508", "f0_999"]}})
    assert load_config({"embedding": {"value_vectors": ["f0_508"]}}).embedding.value_vectors == [
        "f0_508"
    ]
