"""Generated protobuf package (see proto/); do not edit."""
