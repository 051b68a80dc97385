"""Project hooks: parameters are validated once, before any node runs."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from rec_pipeline.config import load_config

log = logging.getLogger(__name__)


class ValidateParametersHook:
    """Fail fast: a misspelt key or an inconsistent setting stops the run before any work."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        cfg = load_config(catalog.load("parameters"))
        log.info("Parameters validated (experiment '%s').", cfg.experiment.name)
