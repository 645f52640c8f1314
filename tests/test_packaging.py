"""Packaging: environment.yml matches pyproject's requirements; common/ imports; the README shows the two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = data["dependencies"] + data["optional-dependencies"]["test"] + data["optional-dependencies"]["tracking"]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def _environment_pip_requirements() -> dict[str, Requirement]:
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    out = {}
    for line in lines[start + 1 :]:
        m = re.match(r"^\s+-\s+(.+?)\s*$", line)
        if not m:
            break
        spec = m.group(1)
        if spec.startswith("-e"):
            continue
        req = Requirement(spec)
        out[req.name.lower()] = req
    return out


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_requirements(), _environment_pip_requirements()
    assert set(py) == set(env), (
        f"only in pyproject: {set(py) - set(env)}; only in environment.yml: {set(env) - set(py)}"
    )
    for name, req in py.items():
        pinned = env[name]
        if str(pinned.specifier) == str(req.specifier):
            continue
        # environment.yml may pin an exact version (torch's CPU wheel) that pyproject's range admits
        versions = [s.version for s in pinned.specifier if s.operator == "=="]
        assert versions and req.specifier.contains(versions[0]), f"{name}: {pinned} vs {req}"


def test_install_script_pins_the_torch_that_environment_yml_names():
    env_torch = str(_environment_pip_requirements()["torch"].specifier).lstrip("=")
    assert f"torch==${{TORCH_VERSION:-{env_torch}}}" in (REPO / "scripts" / "install.sh").read_text()


def test_common_importable_from_another_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import common, common.weighting as w; print(sorted(w.WEIGHTINGS))"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pcgrad" in proc.stdout and "famo" in proc.stdout


def test_readme_shows_the_two_commands_and_ci_calls_the_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/run_demo.sh" in readme and "bash scripts/run_tests.sh" in readme
    assert "python -m monai.bundle run" in readme
    assert "bash scripts/run_tests.sh" in (REPO / ".ci" / "run").read_text()


def test_test_command_lints_before_pytest():
    """scripts/run_tests.sh (CI's command) fails on lint errors: ruff runs before pytest, under ``set -e``."""
    script = (REPO / "scripts" / "run_tests.sh").read_text()
    assert "set -euo pipefail" in script
    assert 0 <= script.find("ruff check") < script.find("python -m pytest")
    assert "ruff" in _pyproject_requirements() and "select" in tomllib.loads(
        (REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
