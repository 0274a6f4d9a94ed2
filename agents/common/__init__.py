"""Shared pieces of the agents: config, environments, the collector, policies, rollouts, logs and checkpoints."""
