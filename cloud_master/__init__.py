"""The cloud tier: GPU workers (``fogline worker``, :mod:`cloud_master.worker`) and, still to come,
the cloud master (``fogline cloud``: regions, workers, model catalog, escalation from the edge).

Only the worker imports torch (through ``fogline.runtime.torch``), so this package does not import
it on its own: the cloud master must run without torch.
"""
