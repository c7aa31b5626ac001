"""The worker stage: consume requests, score them in batches, commit results exactly once.

In the order a batch meets them:
- `loop`: the consumer group and the wiring: fetch → decide → act (`pipeline worker`);
- `ownership`: the partitions a worker owns: restored when assigned, committed when revoked;
- `batching`: when to fetch, hold, score and commit, a pure state machine;
- `messages`: what the parts hand each other (`Inbound`, `Outbound`, `DedupEntry`);
- `processor`: one batch in, messages out (validate, dedup, features, score), no Kafka;
- `lanes`, `delivery`: transaction lanes and the one place delivery semantics live (KIP-447), aborts included;
- `dedup`, `store`: the idempotency state and its committed entries on disk;
- `startup`, `changelog`, `result_reader`: the checks before a worker joins, the state's rebuild from
  the results topic, and a committed result read back for a repeat;
- `answers`: HTTP callers' answers, sent to the bridge that asked;
- `retry`, `priority`, `topic_catalog`: backoff for outages, a backfill worker's gate, the topics its copies go to.
"""
