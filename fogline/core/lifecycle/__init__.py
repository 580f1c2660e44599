"""The model lifecycle in the core: the registry of pushed model versions (``registry.py``)."""
