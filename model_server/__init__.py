"""A TensorFlow Serving-compatible model server in Python (REST + gRPC)."""
