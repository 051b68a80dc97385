"""Project hooks: parameters are validated once, before any node runs."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from rec_pipeline.config import IGNORED_KEYS, ignored_keys, load_config

log = logging.getLogger(__name__)


class ValidateParametersHook:
    """Fail fast: a misspelt key or an inconsistent setting stops the run before any work."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        parameters = catalog.load("parameters")
        cfg = load_config(parameters)
        log.info("Parameters validated (experiment '%s').", cfg.experiment.name)
        ignored = ignored_keys(parameters)
        if ignored:
            log.warning(
                "These parameters are accepted but have no effect: %s",
                "; ".join(
                    f"{k} ({IGNORED_KEYS.get(k, 'model.backbone sets it')})" for k in ignored
                ),
            )
