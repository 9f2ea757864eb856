"""The import direction (cli -> entry points -> Ray shells -> core, no cycles in the core) holds: import-linter's contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports in a fresh interpreter whose sys.path starts at `root`, so the tree under `root` is what it reads."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(root / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_breaks_on_a_core_to_shell_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the tree with one core module importing a shell fails it."""
    for part in ("perkunas_ray", "actors", "deployments"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "corpus"))
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "perkunas_ray" / "config.py"
    config.write_text(config.read_text() + "\nimport actors.driver  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "perkunas_ray.config is not allowed to import actors" in result.stdout


