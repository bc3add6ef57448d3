"""In-memory result store with a TTL, an entry cap and a byte cap. Nothing is ever written to disk.

A result holds the uploaded image bytes (to render the overlay on request), the faces (masks and
matrices) and the JSON response. Ids are 128-bit random (``secrets.token_urlsafe``), so they cannot be
guessed; an expired or evicted id answers like an unknown one. A result larger than the byte cap on its own
is not kept (the service answers it without an id) and evicts nothing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fmpn.inference import ImagePrediction


@dataclass
class StoredResult:
    image_bytes: bytes
    prediction: ImagePrediction
    classes: list[str]
    response: dict[str, Any]
    expires_at: float = 0.0  # monotonic clock
    size: int = 0


class ResultStore:
    def __init__(
        self,
        ttl_s: float,
        max_items: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._items)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @staticmethod
    def footprint(image_bytes: bytes, prediction: ImagePrediction) -> int:
        """The bytes a result counts against ``max_bytes``: the photo's file and its faces' masks."""
        return len(image_bytes) + sum(f.mask.nbytes for f in prediction.faces)

    def fits(self, size: int) -> bool:
        """Whether a result of ``size`` bytes can be kept at all (alone, it is within ``max_bytes``)."""
        return size <= self.max_bytes

    def put(self, result_id: str, result: StoredResult) -> bool:
        """Keep ``result`` under ``result_id``, evicting the oldest results to make room. A result larger than
        ``max_bytes`` on its own is not kept, and nothing is evicted for it: False (check :meth:`fits` first)."""
        result.size = self.footprint(result.image_bytes, result.prediction)
        if not self.fits(result.size):
            return False
        result.expires_at = self.clock() + self.ttl_s
        with self._lock:
            self._purge()
            old = self._items.pop(result_id, None)
            if old is not None:
                self._bytes -= old.size
            self._items[result_id] = result
            self._bytes += result.size
            while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.size
        return True

    def get(self, result_id: str) -> StoredResult | None:
        with self._lock:
            self._purge()
            return self._items.get(result_id)

    def _purge(self) -> None:
        now = self.clock()
        while self._items:
            key, first = next(iter(self._items.items()))
            if first.expires_at > now:
                break
            del self._items[key]
            self._bytes -= first.size
