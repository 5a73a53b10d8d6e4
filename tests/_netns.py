"""Simulated hosts on one Linux machine: one network namespace per host, joined by a bridge.

Every host is a namespace ``{prefix}-{name}`` with loopback up and one veth (``eth0``) holding
its address in ``10.213.0.0/24``. The bridge lives in a namespace of its own
(``{prefix}-switch``), so nothing is added to the machine's own network namespace: the hosts
reach each other and nothing else (no route leaves the subnet). All namespaces share the
filesystem, so a temp dir is a "shared filesystem" for the simulated hosts.

Needs root and ``ip`` (iproute2). Used by ``tests/test_multihost.py``; by hand::

    python tests/_netns.py up osw head worker1 worker2 client   # prints the addresses
    ip netns exec osw-head ...
    python tests/_netns.py down osw head worker1 worker2 client  # kills their processes too
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

SUBNET = "10.213.0"  # /24; .1 is the first host
_TIMEOUT_S = 20.0


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = _TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def unavailable() -> str | None:
    """Why namespaces can't be made here, or ``None`` when they can (tries one, removes it)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"oswprobe{os.getpid()}"
    try:
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"'ip netns add' failed: {r.stderr.strip()}"
        r = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if r.returncode != 0:
            return f"cannot create a bridge in a namespace: {r.stderr.strip()}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'ip netns' unusable: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)


def namespaces() -> set[str]:
    r = _ip("netns", "list", check=False)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


class Hosts:
    """A set of simulated hosts. :meth:`up`, use, :meth:`down` (idempotent, always call it)."""

    def __init__(self, prefix: str, names: Sequence[str]) -> None:
        if not 1 <= len(names) <= 250:
            raise ValueError("between 1 and 250 hosts")
        self.prefix = prefix
        self.names = list(names)
        self.switch = f"{prefix}-switch"
        self.addr = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(self.names)}

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def all_ns(self) -> list[str]:
        return [self.ns(n) for n in self.names] + [self.switch]

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self) -> Hosts:
        existing = namespaces() & set(self.all_ns())
        if existing:
            raise NetnsError(f"namespaces already exist: {sorted(existing)}")
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, name in enumerate(self.names):
                ns = self.ns(name)
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                # Both ends are created inside the namespaces: nothing touches the machine's own.
                _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                    "netns", self.switch)
                _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0")
                _ip("-n", self.switch, "link", "set", f"p{i}", "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
            self._wait_links()
        except BaseException:
            self.down()
            raise
        return self

    def _wait_links(self) -> None:
        """Until every host's veth reports carrier (the links come up asynchronously)."""
        for name in self.names:
            deadline = time.monotonic() + _TIMEOUT_S
            while "LOWER_UP" not in _ip("-n", self.ns(name), "-o", "link", "show", "eth0").stdout:
                if time.monotonic() > deadline:
                    raise NetnsError(f"the link of {name} ({self.addr[name]}) did not come up")
                time.sleep(0.1)

    def down(self, timeout_s: float = _TIMEOUT_S) -> list[str]:
        """Kill every process in the hosts' namespaces, then delete the namespaces.

        Returns what could not be cleaned (empty when all is gone)."""
        for name in self.names:
            with contextlib.suppress(NetnsError, OSError, subprocess.TimeoutExpired):
                self.kill(name, timeout_s=timeout_s)
        problems = []
        for ns in self.all_ns():
            if ns in namespaces():
                r = _ip("netns", "del", ns, check=False)
                if r.returncode != 0:
                    problems.append(f"{ns}: {r.stderr.strip()}")
        left = namespaces() & set(self.all_ns())
        problems += [f"{ns}: still listed" for ns in sorted(left) if not any(p.startswith(ns) for p in problems)]
        return problems

    # -- processes ----------------------------------------------------------------------------
    def cmd(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run on host ``name``."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def pids(self, name: str) -> list[int]:
        """Every process whose network namespace is host ``name``'s."""
        if self.ns(name) not in namespaces():
            return []
        r = _ip("netns", "pids", self.ns(name), check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = _TIMEOUT_S) -> int:
        """Send ``sig`` to every process of host ``name`` (again to ones forked meanwhile) until
        none is left, SIGKILL after half the timeout; returns how many were signalled. Raises
        when some outlive the timeout."""
        start = time.monotonic()
        signalled: set[int] = set()
        while True:
            pids = self.pids(name)
            if not pids:
                return len(signalled)
            elapsed = time.monotonic() - start
            if elapsed > timeout_s:
                raise NetnsError(f"processes of {name} still alive after {timeout_s:.0f} s: {pids}")
            now = sig if elapsed < timeout_s / 2 else signal.SIGKILL
            for pid in pids:
                if pid not in signalled or now == signal.SIGKILL:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, now)
                signalled.add(pid)
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("up", "down"):
        print(__doc__)  # noqa: T201
        return 2
    hosts = Hosts(argv[1], argv[2:])
    if argv[0] == "up":
        hosts.up()
        for name in hosts.names:
            print(f"{hosts.ns(name)}\t{hosts.addr[name]}")  # noqa: T201
        return 0
    problems = hosts.down()
    for p in problems:
        print(f"not cleaned: {p}", file=sys.stderr)  # noqa: T201
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
