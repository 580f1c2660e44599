"""The credentials of a secure ``fogline up``, kept under ``<workdir>/tls``:

- ``ca/``: the stack's own fleet CA (made on the first run, kept after) and its join tokens;
- ``<process>/``: each process's certificate and key, issued afresh on each start, naming the
  process (``spiffe://fogline/<service>[/<region>]/<id>``) and ``127.0.0.1``/``localhost``;
- ``client/``: a client certificate for users (``fogline infer``, the SDK, tritonclient);
- ``admin.token``: the admin API's bearer token.

Private keys and the token are readable by the owner only.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fogline.adapters.tls.certs import FleetCA, write_identity
from fogline.adapters.tls.material import TlsFiles, write_private
from fogline.core.security.identity import Identity

LOCAL_HOSTS = ("127.0.0.1", "localhost")
CERT_TTL_S = 30 * 24 * 3600.0


class StackCredentials:
    """Issues and lays out the credentials of one local stack."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ca_dir = self.directory / "ca"
        self.admin_token_file = self.directory / "admin.token"
        self._ca: FleetCA | None = None

    def prepare(self) -> None:
        """Load or make the CA, the admin token and the users' client certificate."""
        self._ca = FleetCA.load(self.ca_dir) if (self.ca_dir / "ca.key").is_file() else FleetCA.init(self.ca_dir)
        if not self.admin_token_file.is_file():
            write_private(self.admin_token_file, secrets.token_urlsafe(32).encode())
        self.issue("client", Identity(service="client", id="user"))

    def issue(self, name: str, identity: Identity) -> TlsFiles:
        """A certificate for ``identity`` in ``<dir>/<name>/``."""
        assert self._ca is not None, "prepare() first"
        cert, key = self._ca.issue(identity, ttl_s=CERT_TTL_S, hosts=LOCAL_HOSTS)
        assert key is not None
        return write_identity(self.directory / name, cert, key, self._ca.cert_pem)

    def flags(self, name: str, identity: Identity) -> list[str]:
        """The command-line flags that give the process ``name`` its certificate."""
        files = self.issue(name, identity)
        return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]

    def files(self, name: str) -> TlsFiles:
        """Where the certificate of ``name`` is."""
        d = self.directory / name
        return TlsFiles(d / "cert.pem", d / "key.pem", d / "ca.pem")

    def state(self) -> dict[str, str]:
        """What the state file says about them: the CA, the users' client credentials, the admin token file."""
        client = self.files("client")
        return {"ca": str(client.ca), "client_cert": str(client.cert), "client_key": str(client.key),
                "admin_token_file": str(self.admin_token_file), "ca_dir": str(self.ca_dir)}
