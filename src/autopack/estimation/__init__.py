"""Token estimation: features → p50/p90 → ``max_tokens`` (pure library, no HTTP or database)."""
