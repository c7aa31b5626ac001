"""Re-publishing past requests so they are scored again.

- `redrive`: `pipeline dlq redrive`, dead letters back to the requests topic after a fix.
"""
