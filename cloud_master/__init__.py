"""Cloud master and GPU worker (``fogline cloud``, ``fogline worker``).

Not built yet: this package arrives with the cloud-tier issue (coordinator, PyTorch GPU workers,
escalation from the edge). It is the only package besides the worker that may import torch.
"""
