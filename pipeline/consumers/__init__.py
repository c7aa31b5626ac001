"""The results' consumers, on Faust: agents over the results topic with tables backed by changelogs.

- `app`: the Faust app (read_committed, no web server), run with a bounded shutdown;
- `fraud_rules`: the fraud rules, pure; `fraud`: their agent and tables, publishing to `fraud.alerts`;
- `drift_stats`: PSI and KS of a window against a model's training reference, pure.
"""
