"""`pipeline bench`: every benchmark scenario on the local stack, and its report. See docs/performance.md.

- `options`: every option, declared once; `runner`: the groups in turn, the report; `report`: its
  table, JSON and chart; `summary`: medians, ratios, targets; `machine`: what it ran on;
- `context`: what a group runs on and gives back; `rounds`: interleaved rounds after a warm-up one;
- the groups, each its run and its block of the table: `throughput` (its scenarios: `scenarios`),
  `http`, `state_group`, `consumers`, `replay`, `burst`, `soak`;
- their load: `load` (Kafka), `http_load` and `http_client` (HTTP), `consumer_load`; their processes:
  `peers` and `request_response` (what a user might run instead), `state` (`pipeline bench-state`);
- `cpu`, `memory`: CPU and RSS from /proc; `stats`: the pure figures.
"""
