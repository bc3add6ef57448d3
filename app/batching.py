"""Dynamic batching: images from concurrent requests share one detector + model pass.

Requests put jobs on a bounded queue (full -> :class:`QueueFull`, the route answers 503). One worker
task takes the first waiting job, collects more up to ``max_batch`` while waiting at most
``max_wait_s`` (and only while more requests are on their way: a lone request does not wait), then
runs the whole batch in a dedicated inference thread, so the event loop never blocks. Jobs whose
client has gone away are dropped before they reach the model.

Video frames go on a second, background queue: a batch takes the waiting photos first and at most
``BACKGROUND_PER_BATCH`` frame, even when photos fill the rest, so a photo sent beside a video waits for at most a
batch with one frame in it, and the video still moves on while photos keep coming. (Measured on 2 CPU cores with
``bench/bench_video_service.py``: photos beside a video at p50 4.2x their latency alone with one frame a batch, 6.7x
with two, 15x when a video's frames queued 16 at a time like photos; the video 1.5x, 1.25x and 1.07x its time alone.)

Every torch call of the service runs on that one thread (:meth:`Batcher.run` loads and warms the model there):
torch's OpenMP workers belong to the thread that calls it, and a second live thread that has called torch keeps a
second team whose workers compete with the first for the cores. Loaded in another thread, the released model
answered a photo 1.5x slower on the 2-core CPU (README, "Inside").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("app.batching")

BACKGROUND_PER_BATCH = 1


class QueueFull(Exception):
    def __init__(self, size: int, retry_after: int) -> None:
        super().__init__(f"the inference queue is full ({size} images waiting, queue_size={size})")
        self.size = size
        self.retry_after = retry_after


@dataclass
class Job:
    image: Any
    options: dict[str, Any]
    future: asyncio.Future
    background: bool = False  # a video frame
    enqueued: float = field(default_factory=time.perf_counter)


# run_batch(images, options of the first job) -> (results in order, stage timings in seconds)
BatchFn = Callable[[list[Any], list[dict[str, Any]]], tuple[list[Any], dict[str, float]]]


class Batcher:
    def __init__(
        self,
        run_batch: BatchFn,
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[int, dict[str, float]], None] | None = None,
        on_dequeue: Callable[[float], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.on_dequeue = on_dequeue
        self._queue: asyncio.Queue[Job] | None = None
        self._background: asyncio.Queue[Job] | None = None  # video frames
        self._waiting: asyncio.Event | None = None  # set when either queue gets a job
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.incoming = 0  # requests decoding their image, about to submit
        self._batch_seconds = 0.1  # moving average, for Retry-After
        self._frame_due = False  # the batch before had no frame while one waited

    @property
    def depth(self) -> int:
        if self._queue is None or self._background is None:
            return 0
        return self._queue.qsize() + self._background.qsize()

    @property
    def room(self) -> int:
        """Images the queues take before ``submit`` raises QueueFull."""
        return self.queue_size - self.depth

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _inference_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmpn-infer")
        return self._executor

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the inference thread, where the batches run: loading and warming up the model."""
        return await asyncio.get_running_loop().run_in_executor(self._inference_thread(), fn, *args)

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._background = asyncio.Queue()  # bounded with the other by depth (Service checks room first)
        self._waiting = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="fmpn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        for queue in (self._queue, self._background):
            while queue is not None and not queue.empty():
                job = queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def retry_after(self) -> int:
        batches_ahead = max(1, self.depth) / max(1, self.max_batch)
        return max(1, round(batches_ahead * self._batch_seconds + 0.5))

    async def submit(self, image: Any, *, background: bool = False, **options: Any) -> tuple[Any, dict[str, float]]:
        """Queue one item; returns (its result, {queue, batch, batch_size, stage timings...}). ``background``: a
        video frame, served after the photos waiting (module docstring)."""
        if self._queue is None or self._background is None or self._waiting is None or not self.running:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        job = Job(image, options, loop.create_future(), background)
        if self.room <= 0:
            raise QueueFull(self.queue_size, self.retry_after())
        (self._background if background else self._queue).put_nowait(job)
        self._waiting.set()
        return await job.future

    async def _next(self) -> tuple[Job, bool]:
        """The next job to run and whether it is a video frame: a waiting photo first, else a waiting frame; but a
        frame first when the batch before had none while one waited (with ``max_batch`` 1 no batch has room for
        both, and photos arriving without pause would hold a video back for ever)."""
        assert self._queue is not None and self._background is not None and self._waiting is not None
        while True:
            if self._frame_due and not self._background.empty():
                return self._background.get_nowait(), True
            if not self._queue.empty():
                return self._queue.get_nowait(), False
            if not self._background.empty():
                return self._background.get_nowait(), True
            self._waiting.clear()
            await self._waiting.wait()

    async def _collect(self, first: Job, first_background: bool) -> list[Job]:
        assert self._queue is not None and self._background is not None
        loop = asyncio.get_running_loop()
        batch = [first]
        frames = int(first_background)
        # Room kept for one frame when frames wait and the batch has none: a video moves on under any photo load.
        keep = 0 if frames or self._background.empty() else 1
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch - keep:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            timeout = deadline - loop.time()
            if timeout <= 0 or self.incoming <= 0:
                break  # nothing more is on its way (or the wait is over): go now
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        while len(batch) < self.max_batch and frames < BACKGROUND_PER_BATCH and not self._background.empty():
            batch.append(self._background.get_nowait())
            frames += 1
        return batch

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            first, background = await self._next()
            batch = await self._collect(first, background)
            self._frame_due = not any(job.background for job in batch) and not self._background.empty()
            now = time.perf_counter()
            live = [job for job in batch if not job.future.done()]  # drop jobs whose client went away
            if not live:
                continue
            if self.on_dequeue is not None:
                for job in live:
                    self.on_dequeue(now - job.enqueued)
            start = time.perf_counter()
            try:
                results, timings = await self.run(self.run_batch, [j.image for j in live], [j.options for j in live])
            except asyncio.CancelledError:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the service is shutting down"))
                raise
            except Exception as exc:  # a failed batch fails its requests, never the worker
                log.error("inference batch of %d failed: %s: %s", len(live), type(exc).__name__, exc)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - start
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
            if self.on_batch is not None:
                self.on_batch(len(live), timings)
            for job, result in zip(live, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    meta = dict(timings, queue=start - job.enqueued, batch=elapsed, batch_size=len(live))
                    job.future.set_result((result, meta))
