"""The synchronous HTTP bridge: a request in, the pipeline's result for it out."""
