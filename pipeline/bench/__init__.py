"""`pipeline bench`: every benchmark scenario on the local stack, and its report.

- `runner`: the scenarios, interleaved with warm-up and repetitions; `load`, `http`: their load;
- `peers`: what a user might run instead of the pipeline; `memory`: RSS from /proc;
- `stats`: the pure figures; `report`: table, JSON and chart. See docs/performance.md.
"""
