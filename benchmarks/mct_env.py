"""Sony MCT's own virtualenv for the hard-PTQ benchmark, made on first use and checked on each.

model-compression-toolkit 2.6.1 runs its Keras side only on TensorFlow ≤ 2.15 (tflq runs on
the newest TensorFlow), so the benchmark runs MCT in a separate virtualenv
(:mod:`benchmarks.mct_runner`). :func:`ensure` makes it from PyPI when the folder does not
exist yet, and refuses a folder that is not such a virtualenv instead of changing it: a
user's own environment is never reinstalled. A failed install leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

__all__ = ["REQUIREMENTS", "EXPECTED", "DEFAULT_VENV", "installed_versions", "ensure"]

# numpy < 2: TensorFlow 2.15 was built against numpy 1.x.
REQUIREMENTS = ("tensorflow==2.15.1", "model-compression-toolkit==2.6.1", "numpy<2")
EXPECTED = {"tensorflow": "2.15.1", "model-compression-toolkit": "2.6.1"}
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "tflq-mct-venv")

_PROBE = ("import json, importlib.metadata as m\n"
          "def v(name):\n"
          "    try:\n"
          "        return m.version(name)\n"
          "    except m.PackageNotFoundError:\n"
          "        return None\n"
          f"print(json.dumps({{n: v(n) for n in {sorted(EXPECTED)!r}}}))\n")


def installed_versions(python: str) -> dict:
    """``{distribution: version or None}`` of :data:`EXPECTED`'s packages as ``python`` sees
    them (read from its package metadata, nothing imported).

    Raises:
      ValueError: ``python`` does not run.
    """
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              check=False, timeout=120)
    except OSError as e:
        raise ValueError(f"Cannot run {python!r}: {e}") from e
    if done.returncode != 0:
        raise ValueError(f"{python!r} failed to report its packages: "
                         f"{done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure(venv: str = DEFAULT_VENV, base_python: str = sys.executable,
           pip_args: tuple[str, ...] = (), log=print) -> str:
    """The python of MCT's virtualenv at ``venv``, made there first if the folder is absent.

    Args:
      venv: the virtualenv folder.
      base_python: the interpreter the virtualenv is made from (Python 3.9–3.11 for
        TensorFlow 2.15).
      pip_args: extra ``pip install`` arguments (an index URL, ``--no-index``...).
      log: where progress lines go.

    Raises:
      ValueError: ``venv`` exists but is not a virtualenv with :data:`EXPECTED`'s versions
        (left as it is), or making it failed (the half-made folder is removed).
    """
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(venv):
        if not os.path.exists(python):
            raise ValueError(f"{venv!r} exists and is not a virtualenv (no bin/python); remove it "
                             "or pass another folder for MCT's virtualenv.")
        return _checked(python, venv)
    log(f"making Sony MCT's virtualenv at {venv} ({', '.join(REQUIREMENTS)}; a few minutes, "
        "once)")
    try:
        subprocess.run([base_python, "-m", "venv", venv], check=True, capture_output=True,
                       text=True)
        done = subprocess.run([python, "-m", "pip", "install", "-q", *pip_args, *REQUIREMENTS],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ValueError(f"pip could not install {list(REQUIREMENTS)} into {venv!r}: "
                             f"{done.stderr.strip()[-500:]}")
        return _checked(python, venv)
    except (ValueError, OSError, subprocess.CalledProcessError) as e:
        shutil.rmtree(venv, ignore_errors=True)
        detail = e.stderr.strip()[-300:] if isinstance(e, subprocess.CalledProcessError) else e
        raise ValueError(f"Making MCT's virtualenv failed (nothing left at {venv!r}): "
                         f"{detail}") from e


def _checked(python: str, venv: str) -> str:
    found = installed_versions(python)
    if found != EXPECTED:
        raise ValueError(f"The virtualenv {venv!r} has {found}, MCT's benchmark needs "
                         f"{EXPECTED}; it was left unchanged: remove it (it is made again) or "
                         "pass another folder.")
    return python
