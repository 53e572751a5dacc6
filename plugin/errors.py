"""The one error type, owned by converters/ (which stands alone) and re-exported here for plugin/."""

from .converters.errors import TritpackError

__all__ = ["TritpackError"]
