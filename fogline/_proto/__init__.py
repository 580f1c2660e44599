"""Generated gRPC code for protos/ (tools/gen_protos.py). Do not edit."""
