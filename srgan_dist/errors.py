"""``UserError``: the one base of every error a user must act on.

A ``UserError``'s message names the file, key, address or URI at fault and what to do; the
commands print it as one line (exit code 2) and the Ray Train worker never retries one, since a
restart would meet it again (``srgan_dist/train/loop.py``). Anything else is a bug or an outage:
it keeps its traceback and Ray Train's restarts. ``StorageError`` (``storage.py``) is the one
exception family outside it: a storage outage may pass, so a worker retries it.
"""

from __future__ import annotations

import pickle


class UserError(Exception):
    """Something a user has to fix; the message says what and where."""


def torch_load_problem(error: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` (or ``load_state_dict``) refused a file, in one line.

    torch's own message runs to many lines and suggests ``weights_only=False`` or allow-listing the
    refused class, i.e. running whatever the file says: keep only what was refused.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError):
        refused = [line.split(". Please")[0] for line in lines if "GLOBAL" in line][:1]
        return "refused: it holds objects other than tensors and plain Python" + "".join(
            f" ({line[:160]})" for line in refused
        )
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    if not lines:
        return type(error).__name__
    # load_state_dict: "Error(s) in loading state_dict for VGG:" then the keys on the next line.
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= 200 else text[:200] + " ..."
