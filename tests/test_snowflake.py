"""Snowflake ids: layout, strict increase even when the clock steps back."""

from __future__ import annotations

import pytest

from node.core.snowflake import EPOCH_MS, MAX_SEQ, SnowflakeGenerator, node_of, parse_id, timestamp_ms

pytestmark = pytest.mark.engine("lmdb")  # ids and the Snowflake generator: no storage


def test_layout_fields():
    gen = SnowflakeGenerator(513, clock=lambda: EPOCH_MS + 12345)
    first = gen.next_id()
    assert timestamp_ms(first) == EPOCH_MS + 12345
    assert node_of(first) == 513
    assert first & MAX_SEQ == 0
    assert gen.next_id() & MAX_SEQ == 1


def test_strictly_increasing_when_the_clock_steps_back_and_sequence_overflows():
    now = [EPOCH_MS + 10_000]
    gen = SnowflakeGenerator(1, clock=lambda: now[0])
    ids = [gen.next_id() for _ in range(5000)]  # more than 4096 in one millisecond
    now[0] -= 5_000  # the wall clock jumps back five seconds
    ids += [gen.next_id() for _ in range(100)]
    now[0] += 60_000
    ids += [gen.next_id() for _ in range(10)]
    assert all(a < b for a, b in zip(ids, ids[1:]))


def test_a_restart_continues_above_the_high_water_mark():
    gen = SnowflakeGenerator(7, clock=lambda: EPOCH_MS + 50_000)
    last = [gen.next_id() for _ in range(10)][-1]
    restarted = SnowflakeGenerator(7, after=gen.last_id, clock=lambda: EPOCH_MS + 40_000)  # clock behind
    assert restarted.next_id() > last


def test_node_id_range():
    with pytest.raises(ValueError):
        SnowflakeGenerator(1024)


@pytest.mark.parametrize("bad", ["", "12a", "-5", True, 1.5, None, "9" * 30, "0", 385592017045946368, "\uff11\uff12",
                                 "\u0661\u0662", " 12", "12\n"])
def test_parse_id_rejects_non_ids(bad):
    with pytest.raises(ValueError):
        parse_id(bad)


def test_parse_id_accepts_decimal_strings():
    assert parse_id("385592017045946368") == 385592017045946368
