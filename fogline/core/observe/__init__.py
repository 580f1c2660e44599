"""What a process says about its own work: spans of requests (``spans``), for the adapters to record."""
