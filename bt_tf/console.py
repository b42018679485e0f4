"""The console scripts of pyproject.toml: ``bt-train`` = ``python -m bt_tf.train``, and so on.

Each function runs its module's ``main`` through `bt_tf.cli.console`: quiet
start-up BEFORE the module (and with it TensorFlow and Beam) is imported, then
one ``error:`` line and exit code 2 for a user error, exactly as with
``python -m``. This module imports nothing else, so that start-up comes first.
"""

from __future__ import annotations

from typing import NoReturn

from bt_tf import cli


def train() -> NoReturn:
    """``bt-train``: ``python -m bt_tf.train``."""
    cli.console("bt-train")


def evaluate() -> NoReturn:
    """``bt-evaluate``: ``python -m bt_tf.evaluate``."""
    cli.console("bt-evaluate")


def reproduce() -> NoReturn:
    """``bt-reproduce``: ``python -m bt_tf.reproduce``."""
    cli.console("bt-reproduce")


def embed() -> NoReturn:
    """``bt-embed``: ``python -m bt_tf.embed``."""
    cli.console("bt-embed")


def export() -> NoReturn:
    """``bt-export``: ``python -m bt_tf.export``."""
    cli.console("bt-export")


def preprocess() -> NoReturn:
    """``bt-preprocess``: ``python -m pipelines.preprocess``."""
    cli.console("bt-preprocess")


def tune() -> NoReturn:
    """``bt-tune``: ``python -m tuning.search``."""
    cli.console("bt-tune")
