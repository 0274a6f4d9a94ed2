"""``python -m agents.npg``: train NPG (CartPole-v1 by default); ``--help`` lists the flags that apply to NPG."""

from agents.common.cli import main
from agents.npg import NPG

if __name__ == "__main__":
    raise SystemExit(main(NPG))
