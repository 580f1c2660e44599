"""The cloud tier: the cloud master (``fogline cloud``, :mod:`cloud_master.master`: the root of the
control plane — edge masters and GPU workers register with it — a global V2 entry point that
forwards to a region's edge master, and the topology) and GPU workers (``fogline worker``,
:mod:`cloud_master.worker`). Escalation from the edges to the workers is still to come.

Only the worker imports torch (through ``fogline.adapters.runtime.torch``), so this package does not import
it on its own: the cloud master must run without torch.
"""

from cloud_master.master import CloudMaster, CloudSettings

__all__ = ["CloudMaster", "CloudSettings"]
