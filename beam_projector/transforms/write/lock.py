"""The lock a run holds while it publishes into a logdir.

Two runs into one ``--output`` (an Airflow retry overlapping the attempt it
retries, a backfill) must not interleave their publish steps: one could sweep
the data folder the other is about to point its config at. The lock covers
only the publish step (writing ``data-<digest>/``, the extras and the config
swap, then the sweep), so a second run waits seconds, not a whole job.

- **Local disk**: ``fcntl.flock`` on ``OUT/.beam-projector.lock``. The kernel
  releases it when the holder dies, even on SIGKILL, so a killed run never
  blocks the next one. The file itself is never deleted (deleting a lock file
  races with a waiter that has it open).
- **Object stores** (``gs://``, ``s3://``, any non-local Beam filesystem):
  there is no exclusive create through Beam's FileSystems, so the lock is a
  *lease* object holding its owner, host, pid and expiry. A run takes it when
  it is absent or stale (expired, or its holder is a dead process on this
  same host), writes its own lease, waits ``settle_s`` and reads it back: the
  last writer wins and the others go back to waiting. Two runs can only both
  believe they hold it if one wrote its lease more than ``settle_s`` after
  checking that none existed (a stalled process); the holder renews the lease
  while it writes. Clock skew between machines shortens or lengthens leases.
"""
import errno
import json
import logging
import os
import socket
import time
import uuid
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms.files import is_local

LOG = logging.getLogger(__name__)
LOCK_NAME = ".beam-projector.lock"
WAIT_S = 30 * 60      # how long a run waits for another run's publish
LEASE_S = 10 * 60     # object stores: a lease not renewed for this long is stale
SETTLE_S = 2.0        # object stores: write, wait, read back
POLL_S = 0.5


class LockTimeout(RuntimeError):
    """Another run held the publish lock for longer than we wait."""


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    return True


class PublishLock:
    """``with PublishLock(out):`` holds the logdir's publish lock."""

    def __init__(self, output: str, wait_s: float = WAIT_S, lease_s: float = LEASE_S,
                 settle_s: float = SETTLE_S):
        self.output = output
        self.path = FileSystems.join(output, LOCK_NAME)
        self._wait_s, self._lease_s, self._settle_s = wait_s, lease_s, settle_s
        self._fd: Optional[int] = None
        self._owner = uuid.uuid4().hex
        self._renewed = 0.0
        self._local = is_local(output)

    # --- local: flock --------------------------------------------------------------
    def _acquire_local(self):
        import fcntl

        os.makedirs(self.output, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self._wait_s
        logged = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)   # no flock on this filesystem: use a lease instead
                    self._local = False
                    return self._acquire_lease()
            if time.monotonic() > deadline:
                os.close(fd)
                raise LockTimeout(f"another beam-projector run is still publishing to "
                                  f"{self.output}: waited {self._wait_s:.0f}s for the lock "
                                  f"on {self.path}")
            if not logged:
                LOG.info("waiting for another run's publish to %s", self.output)
                logged = True
            time.sleep(POLL_S)
        # The file stays empty: holding the flock is the whole state, so a
        # run that changes nothing else leaves the logdir byte for byte.
        self._fd = fd

    # --- object stores: a lease ---------------------------------------------------
    def _read_lease(self) -> Optional[dict]:
        try:
            with FileSystems.open(self.path, compression_type="uncompressed") as f:
                return json.loads(f.read().decode("utf-8"))
        except Exception:  # noqa: BLE001 - absent or half-written: no valid lease
            return None

    def _write_lease(self):
        lease = {"owner": self._owner, "host": _host(), "pid": os.getpid(),
                 "expires": time.time() + self._lease_s}
        with FileSystems.create(self.path, mime_type="application/json",
                                compression_type="uncompressed") as f:
            f.write(json.dumps(lease).encode("utf-8"))
        self._renewed = time.monotonic()

    def _stale(self, lease: dict) -> bool:
        if float(lease.get("expires", 0)) < time.time():
            return True
        return lease.get("host") == _host() and not _pid_alive(int(lease.get("pid", 0)))

    def _acquire_lease(self):
        deadline = time.monotonic() + self._wait_s
        logged = False
        while True:
            lease = self._read_lease()
            if lease is None or self._stale(lease):
                self._write_lease()
                time.sleep(self._settle_s)
                back = self._read_lease()
                if back and back.get("owner") == self._owner:
                    return
            elif time.monotonic() > deadline:
                raise LockTimeout(
                    f"another beam-projector run is still publishing to {self.output} "
                    f"(pid {lease.get('pid')} on {lease.get('host')}); waited "
                    f"{self._wait_s:.0f}s; if no such run is alive, delete {self.path}")
            if not logged:
                LOG.info("waiting for another run's publish to %s", self.output)
                logged = True
            time.sleep(POLL_S)

    def renew(self) -> None:
        """Object stores: push the lease's expiry out while a long publish writes."""
        if not self._local and time.monotonic() - self._renewed > self._lease_s / 3:
            self._write_lease()

    def __enter__(self):
        if self._local:
            self._acquire_local()
        else:
            self._acquire_lease()
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            return False
        try:
            lease = self._read_lease()
            if lease and lease.get("owner") == self._owner:
                FileSystems.delete([self.path])
        except Exception:  # noqa: BLE001 - an unreleased lease expires on its own
            LOG.warning("could not release %s; it expires in %ss", self.path, self._lease_s)
        return False

