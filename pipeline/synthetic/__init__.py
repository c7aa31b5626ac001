"""Synthetic data with known labels, shared by training, the demo features and the demo traffic.

Kept apart from `local` because the models' training draws on it and the local stack drives training.

- `cards`: accounts and card transactions with a known fraud rule;
- `telemetry`: devices and their sensor readings, with labelled anomalies of four kinds.
"""
