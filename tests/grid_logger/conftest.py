"""The module's log service, on the module's deployed grid."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.contracts import Grid
from tests.grid_logger.helpers import LoggerProcess


@pytest.fixture(scope="module")
def logger(grid: Grid, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggerProcess]:
    service = LoggerProcess(
        tmp_path_factory.mktemp("logger"), grid.anvil.http_url, grid.deployment.meta_scheduler
    ).start()
    try:
        yield service
    finally:
        service.stop()
