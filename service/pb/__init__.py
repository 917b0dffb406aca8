"""Generated protobuf/gRPC code for proto/meterd/v1 (regenerate with `make proto`)."""
