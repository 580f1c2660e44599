"""TOML on every supported Python: the standard library's ``tomllib`` from 3.11, ``tomli`` before it.

Import it from here, not from either library::

    from fogline.core.toml import tomllib
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["tomllib"]
