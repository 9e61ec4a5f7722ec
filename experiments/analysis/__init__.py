"""Research add-ons over the harness: the task-specific-direction analysis and its probe, verify, budget."""
