"""TRPO agent: ``from agents.trpo import TRPO``; command line: ``python -m agents.trpo``."""

from agents.trpo.agent import TRPO

__all__ = ["TRPO"]
