"""The supported torch range has one home, pyproject.toml; CI tests its ends: the README's install (torch
2.13.0 first) and, in a second venv, the oldest supported torch and the triton its CUDA wheel requires."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _requirement(name: str, where: list[str]) -> Requirement:
    return next(r for r in map(Requirement, where) if r.name == name)


def _lower_bound(requirement: Requirement) -> str:
    return next(s.version for s in requirement.specifier if s.operator == ">=")


def _ci_setting(name: str) -> str:
    return re.search(rf"^{name}=(\S+)$", (ROOT / ".ci" / "run").read_text(), re.M).group(1)


def test_ci_tests_the_oldest_torch_and_triton_that_pyproject_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = _requirement("torch", project["dependencies"])
    assert _ci_setting("OLDEST_TORCH") == _lower_bound(torch_requirement)
    for extra in ("gpu", "dev"):  # torch 2.11's CUDA wheel pins triton 3.6.0: the extras must allow it
        triton_requirement = _requirement("triton", project["optional-dependencies"][extra])
        assert _ci_setting("OLDEST_TRITON") == _lower_bound(triton_requirement), extra
        assert triton_requirement.specifier.contains("3.7.1")  # what torch 2.13's wheel takes


def test_the_torch_under_test_is_in_the_supported_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specifier = _requirement("torch", project["dependencies"]).specifier
    assert specifier.contains(Version(torch.__version__).base_version), (torch.__version__, str(specifier))


def test_ci_runs_the_readme_install_and_test_command():
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("python3 -m venv") and "pytest" in x)
    ci = [_words(x) for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in line.split(" && ")[2:]:  # after making and activating the venv
        words = shlex.split(command)
        # as is, or through `run_tests NAME COMMAND`
        assert any(c == words or (c[:1] == ["run_tests"] and c[2:] == words) for c in ci), command


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # a line of the Python check inside .ci/run
        return []
