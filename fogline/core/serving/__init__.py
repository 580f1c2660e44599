"""Serving models on a node: the model repository, dynamic batching, the protocol-neutral data plane."""
