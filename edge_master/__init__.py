"""Edge master: V2 inference for one region, routed over its device nodes (``fogline edge``)."""

from edge_master.master import EdgeMaster, EdgeSettings

__all__ = ["EdgeMaster", "EdgeSettings"]
