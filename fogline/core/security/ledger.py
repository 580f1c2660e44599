"""The CA's ledger of identities: which it has issued certificates to, and which are revoked.

Kept as JSON beside the fleet CA (``identities.json``). An identity enrols with a join token only
if it was never issued before (so a token holder cannot take over the id of a node issued by hand
or enrolled earlier), and a revoked one is refused every renewal, so its certificate dies at its
expiry (enrolled certificates live a day by default).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class IdentityLedger:
    """Issued and revoked identities (SPIFFE URIs), in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, set[str]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"the identity ledger {self.path} cannot be read: {exc}") from None
        return {key: set(raw.get(key, [])) for key in ("issued", "revoked")}

    def _write(self, data: dict[str, set[str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as out:
            json.dump({key: sorted(values) for key, values in data.items()}, out, indent=1)
        os.replace(tmp, self.path)

    def issued(self, uri: str) -> bool:
        """Whether a certificate was ever issued to ``uri``."""
        return uri in self._read()["issued"]

    def revoked(self, uri: str) -> bool:
        """Whether ``uri`` is revoked."""
        return uri in self._read()["revoked"]

    def record(self, uri: str) -> None:
        """Note that ``uri`` holds a certificate."""
        data = self._read()
        if uri not in data["issued"]:
            data["issued"].add(uri)
            self._write(data)

    def revoke(self, uri: str) -> None:
        """Refuse ``uri`` every renewal and enrolment from now on."""
        data = self._read()
        data["revoked"].add(uri)
        self._write(data)
