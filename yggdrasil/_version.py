from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("yggdrasil")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0.0.0+unknown"
