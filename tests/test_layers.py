"""The layers of docs/architecture.md, as import-linter contracts in pyproject.toml (run by `make test`)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree_copy(tmp_path):
    """A copy of the packages and the contracts, to break on purpose."""
    for package in ("benchmarks", "portal", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("portal/sweeps/stray.py", "from workers import tasks", "The portal never imports the workers"),
    ("benchmarks/stray.py", "from portal.sweeps import models", "The engine imports nothing of ours"),
    ("portal/accounts/stray.py", "from portal.sweeps.models import Run", "Portal apps"),
    ("portal/history/stray.py", "from portal.front import views", "Portal apps"),
    ("portal/sweeps/stray.py", "from portal.api import views", "Portal apps"),
    ("portal/api/stray.py", "from portal.front import forms", "The REST API never imports the pages"),
    ("portal/api/stray.py", "from portal.front.fields import URLListField", "The REST API never imports the pages"),
    ("portal/front/stray.py", "from portal.api import serializers", "The pages never import the REST API"),
])
def test_an_import_through_a_wall_breaks_a_contract(tree_copy, module, line, contract):
    (tree_copy / module).write_text(f"{line}  # noqa: F401\n")
    result = lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [ln for ln in result.stdout.splitlines() if " BROKEN" in ln]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout


def test_the_portal_enqueues_tasks_the_workers_register():
    from portal.taskqueue import PROBE_TARGET, RUN_SWEEP, app
    from workers import tasks  # noqa: F401  (registers the tasks)

    assert RUN_SWEEP in app.tasks and PROBE_TARGET in app.tasks
