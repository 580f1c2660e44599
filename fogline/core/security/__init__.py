"""Who a caller is and what it may do: identities named in certificates, join tokens, API keys,
and the rules a master applies to its members. Plain Python: the TLS and HTTP adapters hand the
core what they read off a connection."""
