"""Loading `path/to/flows.py:flow_name` the way an agent will import the bundle."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from meridian import NotFound, SelectorError, ValidationError
from meridian.sdk.loader import load_entrypoint, split_entrypoint

FLOWS = """
from meridian import flow, step
from helpers import double   # a sibling module: the bundle root is on sys.path

@step(target="cloud=aws")
def twice(x: int) -> int:
    return double(x)

@flow
def first(x: int = 1) -> int:
    return twice(x)

@flow(name="second-flow")
def second() -> None:
    pass
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "helpers.py", "def double(x):\n    return 2 * x\n")
    write(tmp_path, "loader_flows_a.py", FLOWS)
    return tmp_path


def test_loads_flow_with_bundle_root_and_module_name(project: Path) -> None:
    loaded = load_entrypoint(f"{project / 'loader_flows_a.py'}:first")
    assert loaded.flow.name == "first"
    assert loaded.root == project.resolve()
    assert loaded.module_name == "loader_flows_a"
    module = sys.modules["loader_flows_a"]
    step_obj = module.twice
    assert step_obj.spec.module == "loader_flows_a"
    assert step_obj.spec.function == "twice"
    assert loaded.flow(3) == 6  # called directly, steps run in-process
    assert load_entrypoint(f"{project / 'loader_flows_a.py'}:second-flow").flow.name == (
        "second-flow"
    )


def test_unknown_flow_lists_defined_flows(project: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_entrypoint(f"{project / 'loader_flows_a.py'}:nope")
    assert "first, second-flow" in str(info.value)
    with pytest.raises(ValidationError, match="first, second-flow"):
        load_entrypoint(str(project / "loader_flows_a.py"))


def test_single_flow_file_needs_no_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "loader_flows_b.py",
        "from meridian import flow\n@flow\ndef only():\n    return 1\n",
    )
    assert load_entrypoint(str(path)).flow.name == "only"


def test_missing_file_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="flow file not found"):
        load_entrypoint(f"{tmp_path / 'missing.py'}:x")
    bad = write(tmp_path, "my-flows.py", "")
    with pytest.raises(ValidationError, match="valid Python module name"):
        load_entrypoint(f"{bad}:x")


def test_import_errors_are_reported_with_location(tmp_path: Path) -> None:
    path = write(tmp_path, "loader_flows_c.py", "import math\n\nraise RuntimeError('boom')\n")
    with pytest.raises(ValidationError) as info:
        load_entrypoint(f"{path}:x")
    assert "RuntimeError: boom" in str(info.value)
    assert "loader_flows_c.py:3" in str(info.value)
    assert "loader_flows_c" not in sys.modules


def test_selector_errors_surface_at_import(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "loader_flows_d.py",
        "from meridian import step\n\n@step(target='cloud in (aws')\ndef s():\n    pass\n",
    )
    with pytest.raises(SelectorError, match=r"step 's' \(loader_flows_d:3\)"):
        load_entrypoint(f"{path}:x")


def test_split_entrypoint() -> None:
    assert split_entrypoint("a/b.py:f") == (Path("a/b.py"), "f")
    assert split_entrypoint("a/b.py") == (Path("a/b.py"), None)
    assert split_entrypoint("C:flows.py") == (Path("C:flows.py"), None)
