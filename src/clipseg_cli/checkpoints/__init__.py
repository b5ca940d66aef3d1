"""Published checkpoints: the registry, loading from disk and fetching from the Hub."""
