"""telemetry_utils: small standard-library helpers for strings, numbers, lists, dates and dicts.

Modules are imported explicitly (``from examples.telemetry_utils import string_util``);
this file imports none of them so each module stands on its own.
"""

__version__ = "1.0.0"
__all__ = ["date_util", "dict_util", "list_util", "number_util", "string_util"]
