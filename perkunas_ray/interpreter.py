"""Run the entry points on the project's interpreter: `ray job submit -- python -m perkunas_ray.train` starts
whatever `python` the cluster's PATH finds, which is not the project's venv when Ray was started without it.

No torch import here (the wrong interpreter has none): this module only looks for the interpreter and hands over.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The README's venv, beside the package: a job run from the repo (Ray's default working dir is where the head
# started) imports perkunas_ray from there, so it finds this interpreter too.
PROJECT_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
HANDED_OVER = "PERKUNAS_HANDED_OVER"  # set on the hand-over, so a venv without torch fails instead of looping


def missing_modules() -> list[str]:
    return [name for name in ("torch", "ray") if importlib.util.find_spec(name) is None]


def ensure_project_interpreter(module: str) -> None:
    """Return when this interpreter can run `module`; else re-run `python -m module ARGS` on the project's venv
    interpreter, or exit with a message that says how to run it."""
    missing = missing_modules()
    if not missing:
        return
    if PROJECT_PYTHON.is_file() and not os.environ.get(HANDED_OVER):
        print(f"perkunas: {sys.executable} has no {', '.join(missing)}; running on the project's interpreter "
              f"{PROJECT_PYTHON}", file=sys.stderr, flush=True)
        os.environ[HANDED_OVER] = "1"
        os.execv(PROJECT_PYTHON, [str(PROJECT_PYTHON), "-m", module, *sys.argv[1:]])
    sys.exit(f"error: {sys.executable} cannot run {module}: it has no {', '.join(missing)}. Run it with the "
             f"interpreter of the venv you installed perkunas-ray in, e.g. `ray job submit -- "
             f"/path/to/.venv/bin/python -m {module}`, or activate that venv before `ray start`.")
