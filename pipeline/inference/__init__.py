"""Scoring on Triton.

- `triton`: the async gRPC client, one `infer` call per batch, model specs read from the server;
- `scoring`: the pure steps around it: check a request against its model, build the feature matrix.
"""
