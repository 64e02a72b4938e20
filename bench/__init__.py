"""QuicFlow's benchmark against grpc.aio and grpclib (``make bench``, docs/benchmarks.md)."""
