"""Where an edge master runs a request: the catalog, hardness of a cascade's device answer, the
escalation policy, calibration, and the edge router that puts them together."""
