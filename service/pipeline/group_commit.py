"""Group commit: concurrent callers' items share one database transaction.

Each caller awaits its own result; while one transaction runs, new items queue up and go together
in the next, so a busy writer pays one commit (one fsync) per group instead of one per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_items: int) -> None:
        self._run = run
        self._max = max_items
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def submit(self, item: T) -> R:
        if self._closing:
            raise RuntimeError("group commit is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="group-commit")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue[:self._max], self._queue[self._max:]
                await self._commit(group)

    async def _commit(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in group])
        except Exception as exc:  # every caller of the group gets the failure: nothing was committed
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Commits what is queued (the loop finishes its current group first), then stops."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
