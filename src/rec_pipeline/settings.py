"""Project settings (see Kedro's configuration docs for the defaults left unchanged)."""

from kedro.config import OmegaConfigLoader

from rec_pipeline.hooks import DataFolderLockHook, ValidateParametersHook, WorkerPoolHook

# Hooks run last-registered first: parameters are validated, then the data folder is locked,
# then the worker pool is set up to be shared (its processes start with the first map).
HOOKS = (WorkerPoolHook(), DataFolderLockHook(), ValidateParametersHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment's parameters.yml overrides conf/base key by key, not section by section.
    "merge_strategy": {"parameters": "soft"},
}
