"""TLS for every Fogline server and client: certificate files reloaded when they change
(:mod:`.material`), grpc credentials and peer identities (:mod:`.credentials`), ssl contexts for the REST
servers and for reading peers' status (:mod:`.http`), and issuing certificates (:mod:`.certs`)."""

from fogline.adapters.tls.material import ClientAuth, TlsFiles, TlsMaterial, TlsSettings

__all__ = ["ClientAuth", "TlsFiles", "TlsMaterial", "TlsSettings"]
