"""One driver per run: the run lock ``<run>/.run.lock``.

The driver takes the lock before it writes anything to the run directory and holds it while it
lives, so a second driver with the same ``--name`` (started at the same moment, or a ``--resume``
while the run still trains) stops with one line naming the holder instead of mixing two runs.

The lock file holds its holder (host, pid, start time, a random token). Its holder refreshes it
every :data:`HEARTBEAT_S` seconds; a lock whose last refresh is older than the lease
(:data:`LEASE_S`) belongs to a driver that is gone (killed, its machine lost) and is taken over,
so a dead driver never blocks ``--resume`` for longer than the lease. A lock held by a process on
this machine that no longer exists is taken over at once.

Where the lock lives decides how "create only if absent" is made atomic:

- a local or shared folder: ``open(O_CREAT | O_EXCL)``; a stale lock is first renamed away (one
  rename wins), then created again. (NFS v3 and later honour ``O_EXCL``.)
- ``s3://``: S3's conditional writes (``PutObject`` with ``If-None-Match: *``; refresh, take-over
  and release with ``If-Match`` on the lock's ETag), through boto3; the lease is measured with the
  server's clock (``Last-Modified`` against the response's ``Date``), so clock skew between
  machines does not matter. Endpoint and credentials come from the environment and the URI's
  ``endpoint_override`` / ``scheme`` / ``region``, as for the rest of the run.
  An S3-compatible store must support conditional writes (AWS S3 and moto do; check MinIO's and
  others' versions): one that rejects them stops the run at the lock with one line, one that
  ignores them gives no protection.
- ``gs://``: pyarrow has no conditional create, so the lock is written after checking that none
  is there: two drivers started within the same second can both pass. Said in the README.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from srgan_dist import storage
from srgan_dist.errors import UserError
from srgan_dist.rundir import RunDir
from srgan_dist.storage import StorageError

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
LEASE_S = 60.0
HEARTBEAT_S = 10.0
TAKEOVER_TIMEOUT_S = 10.0  # a take-over mutex older than this was left by a dead driver


class RunLocked(UserError):
    """Another driver holds the run; the message names it and how long its lease has left."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def me(cls) -> Holder:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), now, uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder a lock file names; None for a file that is not one (treated as stale)."""
        try:
            raw = json.loads(data)
            return cls(str(raw["host"]), int(raw["pid"]), str(raw["started"]), str(raw["token"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def gone(self) -> bool:
        """True when the holder ran on this machine and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


def stale(holder: Holder | None, age_s: float, lease_s: float) -> bool:
    """A lock not refreshed for a whole lease, or whose holder is a process here that is gone."""
    return age_s >= lease_s or (holder is not None and holder.gone())


def locked_message(location: str, holder: Holder | None, age_s: float, lease_s: float) -> str:
    who = holder.describe() if holder else "an unreadable lock file"
    return (
        f"run {location} is in use by another driver ({who}; last seen {age_s:.0f} s ago). "
        f"Wait for it to finish or stop it; a driver that died releases the run {max(lease_s - age_s, 0):.0f} s "
        f"after it was last seen (lock {storage.join(location, LOCK_FILE) if storage.is_uri(location) else Path(location) / LOCK_FILE})"
    )


class _LocalLock:
    """The lock in a local or shared folder (``O_EXCL`` create; stale locks renamed away)."""

    def __init__(self, folder: Path, lease_s: float) -> None:
        self.path, self.lease_s = folder / LOCK_FILE, lease_s

    def acquire(self, me: Holder) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then hard-linked to the lock's name: the link
        # fails if the lock exists, and a lock never exists half-written (safe on NFS too).
        partial = self.path.with_name(f"{LOCK_FILE}.{me.token}")
        partial.write_bytes(me.to_bytes())
        try:
            for _ in range(3):  # a take-over raced by another driver: look again
                try:
                    os.link(partial, self.path)
                    return
                except FileExistsError:
                    self._take_over_if_stale()
            raise RunLocked(
                f"run {self.path.parent}: could not take {self.path} (other drivers keep taking it)"
            )
        finally:
            partial.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        """Remove the lock if it is stale; raise ``RunLocked`` if it is not.

        Only a driver holding the take-over mutex (``.run.lock.takeover``, linked like the lock)
        removes a lock, and only after reading it again under the mutex: two drivers that both
        found it stale cannot remove the fresh lock the faster one has just made.
        """
        found = self._read()
        if found is None:
            return  # released meanwhile
        holder, age_s = found
        if not stale(holder, age_s, self.lease_s):
            raise RunLocked(locked_message(str(self.path.parent), holder, age_s, self.lease_s))
        mutex = self.path.with_name(f"{LOCK_FILE}.takeover")
        with contextlib.suppress(FileNotFoundError):  # a take-over abandoned by a dead driver
            if time.time() - mutex.stat().st_mtime > TAKEOVER_TIMEOUT_S:
                mutex.unlink()
        try:
            mutex.touch(exist_ok=False)
        except FileExistsError:
            time.sleep(0.1)  # another driver is taking over: look again
            return
        try:
            again = self._read()
            if again is not None and again[0] == holder and stale(*again, self.lease_s):
                log.warning(
                    "taking over the stale run lock %s of %s", self.path, holder.describe() if holder else "?"
                )
                self.path.unlink(missing_ok=True)
        finally:
            mutex.unlink(missing_ok=True)

    def _read(self) -> tuple[Holder | None, float] | None:
        """The lock's holder and seconds since its last refresh; None when there is no lock."""
        try:
            return Holder.from_bytes(self.path.read_bytes()), time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def refresh(self, me: Holder) -> bool:
        """Mark the lock alive; False when it is no longer ours."""
        try:
            if Holder.from_bytes(self.path.read_bytes()) != me:
                return False
            os.utime(self.path)
            return True
        except FileNotFoundError:
            return False

    def release(self, me: Holder) -> None:
        with contextlib.suppress(FileNotFoundError):
            if Holder.from_bytes(self.path.read_bytes()) == me:
                self.path.unlink()


class _S3Lock:
    """The lock object in an S3 bucket, through S3's conditional writes (boto3)."""

    def __init__(self, uri: str, lease_s: float) -> None:
        import boto3

        parts = urlsplit(uri)
        query = dict(parse_qsl(parts.query))
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        self.client = boto3.client("s3", endpoint_url=endpoint or None, region_name=query.get("region"))
        self.bucket = parts.netloc.rpartition("@")[2]
        self.key = f"{parts.path.strip('/')}/{LOCK_FILE}"
        self.uri, self.lease_s, self.etag = uri, lease_s, ""

    def _request(self, what: str, method: Any, **arguments: Any) -> dict[str, Any] | None:
        """One S3 request on the lock object; None when S3 answers that a condition did not hold
        or the object is gone; any other failure is a ``StorageError`` naming ``what``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(Bucket=self.bucket, Key=self.key, **arguments)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey"):
                return None
            raise StorageError(f"{what} {self.uri} failed: {error}") from error
        except BotoCoreError as error:
            raise StorageError(f"{what} {self.uri} failed: {error}") from error

    def _put(self, me: Holder, **condition: str) -> bool:
        answer = self._request(
            "writing the run lock of", self.client.put_object, Body=me.to_bytes(), **condition
        )
        if answer is None:
            return False
        self.etag = answer["ETag"]
        return True

    def acquire(self, me: Holder) -> None:
        for _ in range(3):
            if self._put(me, IfNoneMatch="*"):
                return
            answer = self._request("reading the run lock of", self.client.get_object)
            if answer is None:
                continue  # released meanwhile
            holder = Holder.from_bytes(answer["Body"].read())
            server_now = email.utils.parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
            age_s = (server_now - answer["LastModified"]).total_seconds()
            if not stale(holder, age_s, self.lease_s):
                raise RunLocked(locked_message(self.uri, holder, age_s, self.lease_s))
            log.warning(
                "taking over the stale run lock of %s from %s", self.uri, holder.describe() if holder else "?"
            )
            if self._put(me, IfMatch=answer["ETag"]):
                return
        raise RunLocked(f"run {self.uri}: could not take its lock (other drivers keep taking it)")

    def refresh(self, me: Holder) -> bool:
        return self._put(me, IfMatch=self.etag)

    def release(self, me: Holder) -> None:
        # Only while it is still ours (its ETag): a lock taken over meanwhile stays.
        self._request("releasing the run lock of", self.client.delete_object, IfMatch=self.etag)


class _UncheckedBucketLock:
    """``gs://``: written if absent, without an atomic create (see the module docstring)."""

    def __init__(self, uri: str, lease_s: float) -> None:
        self.uri, self.lease_s = storage.join(uri, LOCK_FILE), lease_s

    def _read(self) -> tuple[Holder | None, float] | None:
        info = storage.file_info(self.uri)
        if info is None:
            return None
        return Holder.from_bytes(storage.read_bytes(self.uri)), time.time() - info.mtime.timestamp()

    def acquire(self, me: Holder) -> None:
        found = self._read()
        if found is not None:
            holder, age_s = found
            if not stale(holder, age_s, self.lease_s):
                raise RunLocked(locked_message(storage.parent(self.uri), holder, age_s, self.lease_s))
        storage.write_bytes(self.uri, me.to_bytes())

    def refresh(self, me: Holder) -> bool:
        found = self._read()
        if found is None or found[0] != me:
            return False
        storage.write_bytes(self.uri, me.to_bytes())
        return True

    def release(self, me: Holder) -> None:
        found = self._read()
        if found is not None and found[0] == me:
            storage.delete(self.uri)


class RunLock:
    """The run lock of ``run_dir``, held from :meth:`acquire` to :meth:`release` (or the ``with``
    block), refreshed by a daemon thread meanwhile."""

    def __init__(self, run_dir: RunDir, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        uri = run_dir.uri
        if uri is None:
            self._lock: Any = _LocalLock(run_dir.root, lease_s)
        elif urlsplit(uri).scheme == "s3":
            self._lock = _S3Lock(uri, lease_s)
        else:
            self._lock = _UncheckedBucketLock(uri, lease_s)
        self.run_dir, self.heartbeat_s = run_dir, heartbeat_s
        self.me = Holder.me()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_folder = False

    def acquire(self) -> None:
        """Take the lock or raise ``RunLocked`` naming its holder; start the heartbeat."""
        self._made_folder = self.run_dir.uri is None and not self.run_dir.root.exists()
        try:
            self._lock.acquire(self.me)
        except BaseException:
            self._remove_folder_made()
            raise
        self._thread = threading.Thread(target=self._beat, name="srgan-dist-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._lock.refresh(self.me):
                    log.error("the run lock of %s was taken over by another driver", self.run_dir.location)
                    return
            except Exception as error:  # storage down for a while: try again at the next beat
                log.warning("could not refresh the run lock of %s: %s", self.run_dir.location, error)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s)
        try:
            self._lock.release(self.me)
        except Exception as error:  # the lease ends it anyway
            log.warning("could not release the run lock of %s: %s", self.run_dir.location, error)
        self._remove_folder_made()

    def _remove_folder_made(self) -> None:
        """A run folder this lock created and nothing else used goes again (a refused run leaves
        no trace)."""
        if self._made_folder:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                self.run_dir.root.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
