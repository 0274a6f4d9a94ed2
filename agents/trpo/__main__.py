"""``python -m agents.trpo``: train TRPO (CartPole-v1 by default); ``--help`` lists every flag."""

from agents.common.cli import main
from agents.trpo.agent import TRPO

if __name__ == "__main__":
    raise SystemExit(main(TRPO))
