"""The malloc-arena cap that keeps the server's RSS flat takes effect on glibc."""

from __future__ import annotations

import platform

import pytest

from app.memory import limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_arena_cap_takes_effect_on_glibc() -> None:
    assert limit_malloc_arenas(2) is True
