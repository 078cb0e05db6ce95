"""SSE keep-alive schedule (CONTRACT: "Comment keep-alives at least every 15 s")."""

from __future__ import annotations

import app.sse

CONTRACT_S = 15.0


def test_the_keepalive_interval_leaves_a_margin_under_the_contract():
    """KEEPALIVE_S was 15.0, the contract's bound itself: the timer is only the floor of a gap (the wake-up, the
    disconnect check and the write come on top), and a walkthrough measured keep-alives 15.1 s apart."""
    assert 0 < app.sse.KEEPALIVE_S <= CONTRACT_S - 3.0

