"""Local health awareness (Lifeguard): a node that misses its own deadlines slows down.

If this node's probes fail while the members it asked for help answer with nacks,
the network is fine and the target is probably dead. If the expected nacks do not
arrive, or other members have to tell us we are suspected, the likelier culprit is
this node itself (a starved CPU, a stalled event loop, a saturated link). The score
then rises and every probe interval and timeout is stretched by ``score + 1``, so a
slow node stops accusing healthy members. Successful probes lower the score again.
"""

from __future__ import annotations


class Awareness:
    """A health score between 0 (healthy) and ``max_multiplier - 1``."""

    def __init__(self, max_multiplier: int) -> None:
        self._max = max(1, max_multiplier)
        self.score = 0
        self.peak = 0  # the worst score seen, for statistics

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max - 1)
        self.peak = max(self.peak, self.score)

    def scale(self, seconds: float) -> float:
        """Stretch a timeout by the current health: ``seconds * (score + 1)``."""
        return seconds * (self.score + 1)
