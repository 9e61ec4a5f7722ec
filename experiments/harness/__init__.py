"""The harness: configs, registry, plan, the training loop, records; it names no family and no method."""
