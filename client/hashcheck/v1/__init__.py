"""Generated gRPC and protobuf code for the hashcheck.v1 API (see proto/)."""
