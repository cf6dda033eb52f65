"""The supported torch range has one home, pyproject.toml; CI tests its ends: the README's install (torch
2.13.0 first) and, in a second venv, the oldest supported torch and the triton its CUDA wheel requires."""

import ast
import importlib
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


def _torch_names(source: str) -> set[str]:
    """Every dotted torch name a module uses: `torch.a.b` (also through `import torch.x as y`) and
    `from torch.a import b`."""
    tree = ast.parse(source)
    aliases, names = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    aliases[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                names.add(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in aliases:
            names.add(".".join([aliases[node.id], *reversed(chain)]))
    return names


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                value = getattr(value, part)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's, as some modules load
def test_every_torch_name_arvc_uses_exists_in_this_torch():
    """CI runs this under the oldest supported torch too: a torch function newer than the lower bound
    (torch.nn.utils.get_total_norm came in 2.6) fails here, not on a user's machine. Tensor methods and
    keyword arguments are not seen; the optimizer tests under that torch cover those of the optimizers."""
    names = set()
    for path in (ROOT / "src" / "arvc").rglob("*.py"):
        names |= _torch_names(path.read_text())
    assert len(names) > 100
    assert [name for name in sorted(names) if not _resolves(name)] == [], torch.__version__
