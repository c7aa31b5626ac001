"""Features from Feast's online store.

- `lookup`: one online-store read per batch, for its unique entities;
- `cache`: a short-lived per-entity cache of feature rows in front of it;
- `demo_data`: the demo account features, registered with Feast and materialised (`pipeline features apply`).
"""
