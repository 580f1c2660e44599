"""gRPC adapters: V2 codec, servicers, server assembly, upstream clients, status mapping."""
