"""The Ray backend of a batch: warm actors or a task per job, on a local Ray or a cluster.

Each actor (:class:`tflq.batch.pool.WorkerHost`, one CPU) keeps a warm worker; with
``isolation="process"`` each job is a Ray task running a fresh worker process. Ray's own
failures (an actor killed, a task's process or a whole node lost) are not the job's: such
a job runs again on a new actor, up to :data:`RAY_ATTEMPTS` times, and is ``crashed`` after
that; a job's own failure (exit code, signal, timeout) is its outcome as on the local
backend. Actors with no job left are ended at once, so their CPUs go to replacements.
Every outcome names the Ray node it ran on (``ray_node_id``), how often it started
(``attempts``) and why earlier attempts were lost (``lost_attempts``). Ray is imported only
when a batch runs here; no TensorFlow import.
"""

from __future__ import annotations

import collections

import tflq.batch.outcome as outcome
import tflq.batch.pool as pool
from tflq.batch.outcome import STATUS_CRASHED

__all__ = ["RAY_ATTEMPTS", "run_ray"]

RAY_ATTEMPTS = 2  # runs of a job whose Ray actor, task process or node was lost


def _start_ray(workers: int, address: str | None):
    try:
        import ray
    except ImportError as e:
        raise ValueError("The ray backend needs Ray: pip install 'ray[default]'.") from e
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # A private Ray on this machine, bound to loopback only.
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    return ray, started_here


class _Attempts:
    """Counts how often each job started on Ray and decides what a lost attempt becomes.

    An attempt is lost when Ray reports the actor, task process or node gone (not when the
    job itself failed: that is an outcome). A lost job runs again, on a new actor, up to
    :data:`RAY_ATTEMPTS` times in all, then it is ``crashed``; every outcome records
    ``attempts`` and the errors of the ``lost_attempts``.
    """

    def __init__(self, ray):
        self.ray, self.started, self.lost = ray, {}, {}

    def start(self, payload: dict) -> None:
        self.started[payload["name"]] = self.started.get(payload["name"], 0) + 1

    def is_lost(self, error: BaseException) -> bool:
        """True for Ray's own failures; False for an exception our code raised in the actor."""
        errors = self.ray.exceptions
        return isinstance(error, errors.RayError) and not isinstance(error, errors.RayTaskError)

    def fail(self, payload: dict, error: BaseException) -> dict | None:
        """The outcome of a job whose attempt raised ``error``, or None: run it again."""
        if not self.is_lost(error):
            return self.done(outcome.runner_error(payload, error))
        kind = "actor" if isinstance(error, self.ray.exceptions.RayActorError) else "task"
        reason = f"Ray {kind} lost: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        self.lost.setdefault(payload["name"], []).append(reason)
        if self.started[payload["name"]] < RAY_ATTEMPTS:
            return None
        return self.done(outcome.describe(
            payload, STATUS_CRASHED, f"{reason} (lost {self.started[payload['name']]} times)", 0.0))

    def done(self, finished: dict) -> dict:
        name = finished["name"]
        return {**finished, "attempts": self.started.get(name, 1),
                "lost_attempts": self.lost.get(name, [])}


def run_ray(payloads: list[dict], workers: int, policy: pool.WorkerPolicy, address: str | None,
            execute):
    """Yields outcomes as jobs finish on Ray: warm actors (each a
    :class:`tflq.batch.pool.WorkerHost`, replaced if it dies), or one task per job in a fresh
    process for ``isolation="process"``. A job whose actor, task process or node was lost
    runs again (:class:`_Attempts`). ``execute`` runs one payload in a fresh process
    (:func:`tflq.batch.runner.execute_job`)."""
    if not payloads:
        return
    ray, started_here = _start_ray(workers, address)
    try:
        if policy.isolation == "process":
            yield from _run_ray_tasks(ray, payloads, execute)
        else:
            yield from _run_ray_actors(ray, payloads, workers, policy)
    finally:
        if started_here:
            ray.shutdown()


def _execute_on_ray(execute, payload: dict) -> dict:
    """``execute(payload)`` inside a Ray task, recording the node it ran on."""
    return {**execute(payload), "ray_node_id": pool.ray_node_id()}


def _run_ray_tasks(ray, payloads: list[dict], execute):
    remote = ray.remote(num_cpus=1, max_retries=0)(_execute_on_ray)
    attempts = _Attempts(ray)
    pending = {}
    for payload in payloads:
        attempts.start(payload)
        pending[remote.remote(execute, payload)] = payload
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        payload = pending.pop(ref)
        try:
            finished = attempts.done(ray.get(ref))
        except Exception as e:
            finished = attempts.fail(payload, e)
            if finished is None:
                attempts.start(payload)
                pending[remote.remote(execute, payload)] = payload
                continue
        yield finished


def _release(ray, actor) -> None:
    """Ends an actor's warm worker and the actor itself, so its CPU goes to a replacement."""
    try:
        ray.get(actor.close.remote(), timeout=60)
    except Exception:  # already dead or stuck: killed below either way
        pass
    ray.kill(actor)


def _run_ray_actors(ray, payloads: list[dict], workers: int, policy: pool.WorkerPolicy):
    host = ray.remote(num_cpus=1, max_restarts=0)(pool.WorkerHost)
    todo = collections.deque(payloads)
    attempts = _Attempts(ray)
    running = {}  # object ref -> (actor, payload)

    def assign(actor):
        if todo:
            payload = todo.popleft()
            attempts.start(payload)
            running[actor.run.remote(payload)] = (actor, payload)
        else:
            _release(ray, actor)

    for _ in range(min(workers, len(payloads))):
        assign(host.remote(policy))
    try:
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, payload = running.pop(ref)
            try:
                finished = attempts.done(ray.get(ref))
            except Exception as e:  # the actor died (or our code in it raised): replace it
                ray.kill(actor)
                actor = host.remote(policy)
                finished = attempts.fail(payload, e)
                if finished is None:  # run it again first, on the new actor
                    todo.appendleft(payload)
            if finished is not None:
                yield finished
            assign(actor)
    finally:
        for actor, _ in running.values():
            ray.kill(actor)
