"""Shared pieces of the agents: config, environments, policies, rollouts, logs and checkpoints."""
