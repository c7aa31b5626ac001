"""Lag-based scaling: lag measurement, the policy, the local supervisor, the policy service."""
