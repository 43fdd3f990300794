"""README regions of the distributed benchmark (benchmark_distributed.json), rendered from the JSON.

Registered in :data:`benchmarks.readme_tables.RENDERERS`; kept apart only for module size.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["render_distributed"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _per_node(counts: Mapping) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _lost(run: Mapping) -> str:
    lost = run["lost_attempts"]
    if not lost:
        return "none"
    return ", ".join(f"`{name}` ({run['attempts'][name]} attempts, "
                     f"{run['statuses'][name].replace(' (cached)', '')})" for name in sorted(lost))


def render_distributed(data: Mapping) -> dict[str, str]:
    """Regions of the distributed benchmark: Ray batch with a node killed, multi-worker QAT
    with a worker killed."""
    ray, qat = data["ray_batch"], data["multi_worker_qat"]
    first, rerun, kill = ray["first_run"], ray["rerun"], ray["node_kill"]
    q1, q2, parity = qat["first_run"], qat["rerun"], qat["parity"]
    versions = data["versions"]
    intro = (
        f"`PYTHONPATH=. python -m benchmarks.benchmark_distributed` ran both distributed paths "
        f"on this machine ({data['machine']}, Ray {data['ray_version']}, TensorFlow "
        f"{versions['tensorflow']}; `benchmarks/results/benchmark_distributed.json`). Ray: a head "
        f"and a second node started with `ray start` (one CPU each), `pipelines.batch --backend "
        f"ray --ray_address … --workers {ray['workers']}` over {ray['jobs']} jobs (tiny CNN "
        f"conversions whose factory waits {ray['job_sleep_seconds']:g} s, and one job that kills "
        f"the Ray actor running it), the second node killed whole while it ran its job number "
        f"{kill['kill_on_job']}, then the same command again. QAT: two `pipelines.qat "
        f"--distribution multi_worker` processes "
        f"from a TF_CONFIG on loopback ports, {qat['epochs']} epochs over {qat['train_samples']:,} "
        f"synthetic 8×8 images, worker 1 killed (SIGKILL) after a checkpoint, then both started "
        f"again:")
    rows = [
        ["Ray batch, first run", f"{first['wall_seconds']:.1f}",
         f"exit {first['exit_code']}; node_b killed at {kill['kill_seconds']:.1f} s, in its "
         f"job number {kill['kill_on_job']} "
         f"({kill['processes_killed']} processes; its job worker gone within 10 s: "
         f"{'yes' if not kill['workers_alive_after_10s'] else 'no'}); finished per node: "
         f"{_per_node(first['finished_per_node'])}; rerun after a lost attempt: {_lost(first)}"],
        ["Ray batch, same command again", f"{rerun['wall_seconds']:.1f}",
         f"exit {rerun['exit_code']}; {len(rerun['cached'])} jobs from the cache, "
         f"{len(rerun['ran'])} ran: {', '.join(f'`{n}`' for n in rerun['ran'])}"],
        ["multi-worker QAT, worker 1 killed", f"{q1['kill_seconds']:.1f}",
         f"killed after the checkpoint of epoch {q1['checkpointed_epoch']}; worker 0 exited "
         f"{q1['exit_codes'][0]} {q1['survivor_seconds_to_exit']:.1f} s later with one "
         "`interrupted:` line; `.qat_backup` kept"],
        ["multi-worker QAT, both again", f"{q2['wall_seconds']:.1f}",
         f"exit codes {q2['exit_codes']}; trained epochs "
         f"{q2['epochs_trained'][0]}–{q2['epochs_trained'][-1]} only; .tflite vs QAT model: "
         f"{_pct(parity['within_1_step_vs_qat'])} within one output step, top-1 "
         f"{_pct(parity['top1_agreement_vs_qat'])}; vs float model top-1 "
         f"{_pct(parity['top1_agreement_vs_float'])} ({parity['samples']} images)"],
    ]
    table = _table(["run", "wall s", "what happened"], rows)
    notes = (
        f"Nothing was lost: every job has a manifest entry in both runs. Ray reported the jobs of "
        f"the killed node as lost actors (`{_first_kind(first)}`) and tflq ran them again on a new "
        f"actor; the job that kills its actor each time is `crashed` after "
        f"{first['attempts'].get('kills_its_actor')} attempts. Multi-worker training has no "
        f"elasticity: TensorFlow's coordination service notices the lost worker by its missing "
        f"heartbeats and aborts the collective ops of the survivor ({q1['survivor_seconds_to_exit']:.0f} s "
        f"here), so every worker must be started again; Keras' `BackupAndRestore` then restores "
        f"the last finished epoch and redoes the unfinished one.")
    return {"intro": intro, "table": table, "notes": notes}


def _first_kind(run: Mapping) -> str:
    for name, reasons in sorted(run["lost_attempts"].items()):
        if name != "kills_its_actor" and reasons:
            return reasons[0].split(":")[1].strip()
    return "none"
