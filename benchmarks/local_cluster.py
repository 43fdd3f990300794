"""Real distributed set-ups on one machine, for the slow tests and benchmark_distributed.

:class:`RayCluster` starts a Ray head and a second Ray node with ``ray start --block``, each
in a session of its own with one CPU, a small object store, its own temp folder and a
custom resource named after it (``node_head``, ``node_b``), so a job can be placed on a
node and a node can be killed as a whole (every process of its session, SIGKILL: what a
lost machine looks like to the rest of the cluster). :func:`free_port` picks loopback
ports at run time.

Ray facts measured here (Ray 2.60): ``ray start`` replaces ``--node-ip-address 127.0.0.1``
by the machine's routable address (``ray._private.services.resolve_ip_for_localhost``), so
both nodes register as this machine's own IP; and ``ray start --head`` turns token
authentication on by default, which a second node or a driver without the token refuses
("InvalidAuthToken"): this private cluster runs with ``RAY_AUTH_MODE=disabled``, which
drivers connecting to it need as well (:data:`RAY_ENV`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["RAY_ENV", "free_port", "session_pids", "kill_session", "RayCluster"]

# Environment for every process of the private cluster and for its drivers.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE_BYTES = 200 * 1024 * 1024
START_TIMEOUT = 180.0  # seconds for a node to register (a loaded 2-core machine is slow)


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(session: int) -> list[int]:
    """Every live process whose session id is ``session`` (Linux ``/proc``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state ppid pgrp session
            found.append(int(entry))
    return found


def kill_session(session: int, timeout: float = 30.0) -> int:
    """SIGKILLs every process of a session until none is left; returns how many were killed."""
    killed = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = session_pids(session)
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of session {session} survived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


class RayCluster:
    """A head and a second node of Ray on this machine; use as a context manager.

    Attributes:
      address: ``HOST:PORT`` of the head's GCS (what ``--ray_address`` takes).
      nodes: node name -> the ``ray start --block`` process leading that node's session.
    """

    def __init__(self, env: dict | None = None, num_cpus: int = 1):
        self.env = {**os.environ, **RAY_ENV, **(env or {})}
        self.num_cpus = num_cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.root = tempfile.mkdtemp(prefix="tflq-ray-")  # short: Ray's socket paths are capped
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, head: bool) -> None:
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head \
            else ["--address", self.address]
        log = open(os.path.join(self.root, f"{name}.log"), "wb")
        self.nodes[name] = subprocess.Popen(
            [ray, "start", "--block", *where, "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(self.num_cpus), "--resources", json.dumps({name: 1}),
             "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats",
             "--temp-dir", os.path.join(self.root, name)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()

    def _wait_for(self, count: int) -> None:
        """Waits until ``count`` nodes are alive, asking the head from a short-lived driver."""
        probe = ("import sys, time, ray\n"
                 f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                 f"deadline = time.monotonic() + {START_TIMEOUT}\n"
                 f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
                 "    if time.monotonic() > deadline: sys.exit(1)\n"
                 "    time.sleep(0.5)\n")
        for _ in range(3):  # the head's GCS may not answer yet
            result = subprocess.run([sys.executable, "-c", probe], env=self.env,
                                    capture_output=True, text=True, timeout=START_TIMEOUT + 120)
            for name, process in self.nodes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"Ray node {name} exited with {process.returncode}; see "
                                       f"{os.path.join(self.root, name + '.log')}")
            if result.returncode == 0:
                return
        if result.returncode != 0:
            raise RuntimeError(f"fewer than {count} Ray nodes alive after {START_TIMEOUT:g} s: "
                               f"{result.stderr[-2000:]}")

    def start(self) -> RayCluster:
        self._start("node_head", head=True)
        self._wait_for(1)
        self._start("node_b", head=False)
        self._wait_for(2)
        return self

    def node_ids(self) -> dict[str, str]:
        """Node name -> Ray node id, read from the head (nodes alive now)."""
        probe = ("import json, ray\n"
                 f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                 f"names = {sorted(self.nodes)!r}\n"
                 "print(json.dumps({name: n['NodeID'] for n in ray.nodes() if n['Alive']\n"
                 "                  for name in names if name in n['Resources']}))\n")
        result = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True,
                                text=True, timeout=300, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def pids(self, name: str) -> list[int]:
        """The processes of one node (its session), Ray's workers and actors included."""
        return session_pids(self.nodes[name].pid)

    def kill_node(self, name: str) -> int:
        """Kills every process of one node at once; returns how many."""
        killed = kill_session(self.nodes[name].pid)
        self.nodes[name].wait()
        return killed

    def stop(self) -> None:
        """Kills every node this cluster started and removes its temp folder."""
        for name in reversed(list(self.nodes)):
            kill_session(self.nodes[name].pid)
            self.nodes[name].wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
