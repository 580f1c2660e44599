"""The control plane's domain: the registry of members, the membership loop of a child, topology."""
