"""The module's log service, on the module's deployed grid."""

from tests.grid_logger.helpers import logger

__all__ = ["logger"]
