"""Streaming inference pipeline: Kafka in, Feast features, Triton scores, Kafka out."""

__version__ = "0.1.0"
