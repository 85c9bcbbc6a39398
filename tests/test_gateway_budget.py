"""gateway/budget.py on its own: who waits for the bytes of request bodies in flight, in what order, and what a
request that waits too long gets. (On the real server: tests/test_hostile_requests.py, bursts and stalled uploads.)"""
from __future__ import annotations

import asyncio

import pytest

from gateway.budget import BodyBudget
from gateway.checks import Rejected

MB = 1 << 20


async def _take(budget: BodyBudget, name: str, size: int, hold: asyncio.Event, order: list[str],
                timeout: float = 5) -> None:
    async with budget.hold(size, timeout):
        order.append(name)
        await hold.wait()


def test_large_requests_wait_in_turn_and_small_ones_never_wait() -> None:
    async def scenario() -> tuple[list[str], int]:
        budget, order, release = BodyBudget(10 * MB, small=MB), [], asyncio.Event()
        first = asyncio.ensure_future(_take(budget, "a 8 MB", 8 * MB, release, order))
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(_take(budget, name, size, release, order))
                   for name, size in (("b 4 MB", 4 * MB), ("c 2 MB", 2 * MB))]
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(_take(budget, "d 1 MB", MB, asyncio.Event(), order))
        await asyncio.sleep(0.01)
        seen = list(order)  # c would fit beside a, but waits behind b: first come, first served
        release.set()
        await asyncio.gather(first, *waiting)
        small.cancel()
        await asyncio.gather(small, return_exceptions=True)
        return seen + order[len(seen):], budget.used

    order, used = asyncio.run(scenario())
    assert order == ["a 8 MB", "d 1 MB", "b 4 MB", "c 2 MB"]
    assert used == 0


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    async def scenario() -> list[str]:
        budget, order, release = BodyBudget(10 * MB, small=MB), [], asyncio.Event()
        big = asyncio.ensure_future(_take(budget, "big", 30 * MB, release, order))
        await asyncio.sleep(0.01)
        other = asyncio.ensure_future(_take(budget, "other", 2 * MB, release, order))
        await asyncio.sleep(0.01)
        seen = list(order)
        release.set()
        await asyncio.gather(big, other)
        return seen + ["then"] + order[len(seen):]

    assert asyncio.run(scenario()) == ["big", "then", "other"]


def test_a_wait_longer_than_the_timeout_is_refused_and_leaves_the_queue() -> None:
    async def scenario() -> tuple[Rejected, list[str], int]:
        budget, order, release = BodyBudget(10 * MB, small=MB), [], asyncio.Event()
        first = asyncio.ensure_future(_take(budget, "first", 9 * MB, release, order))
        await asyncio.sleep(0.01)
        with pytest.raises(Rejected) as refused:
            await _take(budget, "too late", 5 * MB, release, order, timeout=0.05)
        later = asyncio.ensure_future(_take(budget, "later", 5 * MB, release, order))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, later)
        return refused.value, order, budget.used

    refused, order, used = asyncio.run(scenario())
    assert (refused.http_status, refused.grpc_code) == (503, "UNAVAILABLE")
    assert "TRITONED_MAX_BYTES_IN_FLIGHT" in refused.message and "retry" in refused.message
    assert order == ["first", "later"] and used == 0
