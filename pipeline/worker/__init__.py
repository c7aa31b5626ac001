"""The worker stage: consume requests, score them in batches, commit results exactly once.

- `loop`: the consumer group, its rebalances and the batch loop (`pipeline worker`);
- `processor`: one batch in, messages out (validate, dedup, features, score), no Kafka;
- `lane`, `delivery`: transaction lanes and the one place delivery semantics live (KIP-447);
- `dedup`, `changelog`: the idempotency state and its rebuild from the results topic;
- `answers`: HTTP callers' answers, sent to the bridge that asked;
- `retry`: capped exponential backoff for Triton and feature-store outages.
"""
