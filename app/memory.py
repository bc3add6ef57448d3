"""Keep the server's memory flat: glibc gives every thread that allocates its own malloc arena.

Inference, decoding and rendering run on worker threads; with one arena each, freed image and tensor
buffers stay fragmented across arenas and RSS climbs by hundreds of MB over thousands of requests (seen in
``bench/bench_soak.py``). Two arenas keep it flat at no measurable speed cost. Only glibc has ``mallopt``;
elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc malloc arenas for threads started from now on; True if it took effect."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
