"""Small helpers of the evaluation's on-disk caches (no TensorFlow: probe workers import them)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from bt_tf import atomic

__all__ = ["cache_file", "write_atomically", "fingerprint_key"]


def cache_file(directory: str, name: str, suffix: str) -> str:
    """``<directory>/<name><suffix>``, the name percent-encoded: the encoding is
    injective, so "bt+de" and "bt_de" get different files."""
    return os.path.join(directory, urllib.parse.quote(name, safe="") + suffix)


def write_atomically(path: str, mode: str, write: Callable[[Any], None]) -> None:
    """``write(file)`` to a temporary file beside ``path``, fsynced, then renamed
    (`bt_tf.atomic.replacing`): never a half-written cache."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic.replacing(path) as tmp, open(tmp, mode) as f:
        write(f)


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint's canonical JSON: what the caches store and compare."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
