"""Two BentoML settings the service fixes through BentoML's internals, as `eluserve.service.app` loads.

Usage tracking. Nothing phones home, however the service is started (`bentoml serve` without
``BENTOML_DO_NOT_TRACK`` too): the `bentoml serve` process imports the service before it starts usage
tracking and its workers (which inherit the environment), but BentoML caches its reading of the
variable (`do_not_track`, an `lru_cache`), so `no_tracking` sets it and clears the cache.

Metrics folder. The workers' Prometheus multiprocess files go in this server's own folder. BentoML's
default is one folder per ``BENTOML_HOME``, which every `bentoml serve` empties as it starts: a second
server on the host (a blue/green restart, a benchmark) deleted the first one's counters, and the first
then answered /metrics with the second one's. `bentoml serve` reads the setting after importing the
service. This is a BentoML bug, written up for upstream in docs/upstream.md ("Every `bentoml serve`
empties the metrics folder of running servers"); `metrics_folder` goes when its fix ships.

`TARGETS` lists what both rely on: tests/service/runtime/test_compat.py fails when any of it changes in
the installed BentoML; on an unknown BentoML a setting that cannot be made is logged and skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_CONTAINERS = "bentoml._internal.configuration.containers"
#: The cached reading of the variable, the metrics folder's setting, and where `bentoml serve` empties
#: that folder.
TARGETS = (
    "bentoml._internal.utils.analytics.usage_stats:do_not_track",
    f"{_CONTAINERS}:_BentoMLContainerClass.prometheus_multiproc_dir",
    "bentoml.serving:ensure_prometheus_dir",
)


def no_tracking() -> bool:
    """Turn BentoML's usage tracking off for this process and the ones it starts.

    Returns:
        whether BentoML's cached reading was cleared too (False: BentoML moved it, and the variable
        alone has to do).
    """
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    try:
        from bentoml._internal.utils.analytics.usage_stats import do_not_track

        do_not_track.cache_clear()
    except (ImportError, AttributeError):
        return False
    return True


def metrics_folder(path: Path) -> bool:
    """Make `path` the Prometheus multiprocess folder of the server about to start.

    Returns:
        whether BentoML took the setting; otherwise its shared default stays (and the log says so).
    """
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    except (ImportError, AttributeError):
        logger.warning("BentoML's metrics folder setting moved; the workers' metrics use its shared default")
        return False
    return True
