"""``UserError``: the one base of every error a user must act on.

A ``UserError``'s message names the file, key, address or URI at fault and what to do; the
commands print it as one line (exit code 2) and the Ray Train worker never retries one, since a
restart would meet it again (``srgan_dist/train/loop.py``). Anything else is a bug or an outage:
it keeps its traceback and Ray Train's restarts. ``StorageError`` (``storage.py``) is the one
exception family outside it: a storage outage may pass, so a worker retries it.
"""

from __future__ import annotations


class UserError(Exception):
    """Something a user has to fix; the message says what and where."""
