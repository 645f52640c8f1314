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
    reqs += data["optional-dependencies"]["solvers"]
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


# Run in a fresh interpreter where highdicom, pynetdicom and dicomweb-client cannot be imported (as in MONAI Label's
# environment): every package of common/ imports and exposes its names; using SEG/SR writing or a PACS transport
# then fails with an error naming the missing package and how to install it.
_WITHOUT_OPTIONAL_LIBRARIES = r"""
import importlib, sys

BLOCKED = ("highdicom", "pynetdicom", "dicomweb_client")


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())

import numpy as np
import pydicom
from monai.utils import OptionalImportError

import common.dicom.photo, common.dicom.series, common.dicom.study  # what the MONAI Label task imports
for pkg in ("data", "dicom", "engines", "handlers", "inferers", "losses", "metrics", "networks", "pacs", "transforms",
            "weighting"):
    module = importlib.import_module(f"common.{pkg}")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"common.{pkg} lacks {missing}"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
from common.dicom import write_measurement_report, write_photo, write_secondary_captures, write_segmentation
from common.handlers import DicomResultWriter, PacsExportHandler

def fails(call, package, hint):
    try:
        call()
    except OptionalImportError as err:
        assert package in str(err) and hint in str(err), str(err)
        print("clear error:", str(err).splitlines()[0])
    else:
        raise AssertionError(f"no error without {package}")

photo = pydicom.dcmread(write_photo(np.full((16, 16, 3), 90, np.uint8), sys.argv[1] + "/eye.dcm"))
mask = np.zeros((1, 16, 16), np.uint8)
mask[0, 4:12, 4:12] = 1
fails(lambda: write_segmentation([photo], mask, ["disc"], "fundus_glaucoma", "0.1", sys.argv[1] + "/seg.dcm"),
      "highdicom", "pip install highdicom")
fails(lambda: write_measurement_report([photo], sys.argv[1] + "/sr.dcm", "fundus_glaucoma", "0.1", {"vcdr": 0.4}),
      "highdicom", "pip install highdicom")
fails(lambda: write_secondary_captures([photo], sys.argv[1], "fundus_glaucoma", "0.1", lines=["vcdr: 0.4"]),
      "highdicom", "pip install highdicom")
from common.pacs import Destination, cstore_instances, dicomweb_client
fails(lambda: cstore_instances(Destination(protocol="cstore", host="127.0.0.1", port=11112, ae_title="PACS"), [photo]),
      "pynetdicom", "pip install pynetdicom")
fails(lambda: dicomweb_client(Destination(protocol="stow", dicomweb_url="http://127.0.0.1:8042/dicom-web"), None),
      "dicomweb_client", "pip install dicomweb-client")
print("ok")
"""


def test_common_imports_without_highdicom_pynetdicom_dicomweb_client(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_OPTIONAL_LIBRARIES, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("clear error:") == 5 and proc.stdout.strip().endswith("ok"), proc.stdout
    assert not list(tmp_path.glob("seg.dcm")) and not list(tmp_path.glob("sr.dcm")) and not list(tmp_path.glob("sc*"))


def _imported_subpackages(path: Path) -> set[str]:
    """The ``common`` subpackages (or modules) that a file of ``common/<pkg>/`` imports, relative or absolute."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("common."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("common.")}
    return out


def test_common_layers_have_no_import_cycle():
    errors = (REPO / "common" / "errors.py").read_text()
    assert "from common" not in errors and "from ." not in errors and "import common" not in errors
    graph = {}
    for pkg in sorted(p for p in (REPO / "common").iterdir() if (p / "__init__.py").is_file()):
        graph[pkg.name] = set().union(*(_imported_subpackages(f) for f in pkg.glob("*.py"))) - {pkg.name}
    assert "data" not in graph["dicom"], "common.dicom must not import common.data (DatasetError is in common.errors)"

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = [pkg for pkg in graph if reaches(pkg, pkg, set())]
    assert not cycles, f"import cycles through {cycles}: {graph}"


def test_test_command_lints_before_pytest():
    """scripts/run_tests.sh (CI's command) fails on lint errors: ruff runs before pytest, under ``set -e``."""
    script = (REPO / "scripts" / "run_tests.sh").read_text()
    assert "set -euo pipefail" in script
    assert 0 <= script.find("ruff check") < script.find("python -m pytest")
    assert "ruff" in _pyproject_requirements() and "select" in tomllib.loads(
        (REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
