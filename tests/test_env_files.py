"""environment.yml and pyproject.toml must name the same packages.

Design: pyproject.toml is the one list. environment.yml's pip section installs the project
itself (`-e .[dev]`), which brings every dependency; anything environment.yml names
explicitly besides python/pip must also be a dependency in pyproject.toml (under the same
name, or its conda alias), and any extra it asks for must exist.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_ALIASES = {"pytorch": "torch"}  # conda package name -> PyPI name
CONDA_ONLY = {"python", "pip", "cpuonly", "pytorch-cuda"}
SELF_INSTALL = re.compile(r"^(-e\s+)?\.(\[(?P<extras>[\w,\s-]+)\])?$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    return norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def load_pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    own = norm(project["name"])
    deps = {req_name(r) for r in project["dependencies"]}
    extras = {}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        extras[extra] = {req_name(r) for r in reqs if req_name(r) != own}
    return own, deps, extras


def load_environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.extend(dep.get("pip", []))
        else:
            conda.append(str(dep))
    return conda, pip


def test_pyproject_lists_the_course_dependencies():
    _, deps, extras = load_pyproject()
    required = {
        "torch",
        "numpy",
        "jupyterlab",
        "matplotlib",
        "ipywidgets",
        "tensorboard",
        "nbval",
        "pytest",
        "tqdm",
        "safetensors",
    }
    assert required <= deps, f"pyproject.toml 缺少依赖: {sorted(required - deps)}"
    assert "test" in extras and "dev" in extras, "pyproject.toml 需要 test 和 dev 两个 extra"


def test_environment_yml_and_pyproject_name_the_same_packages():
    own, deps, extras = load_pyproject()
    conda, pip = load_environment()
    conda_names = {re.split(r"[=<>!\s]", c, maxsplit=1)[0].lower() for c in conda}
    assert {"python", "pip"} <= conda_names, "environment.yml 需要 python 和 pip"

    self_installs = [m for m in (SELF_INSTALL.match(p.strip()) for p in pip) if m]
    explicit_pip = {req_name(p) for p in pip if not SELF_INSTALL.match(p.strip())}
    explicit_conda = {CONDA_ALIASES.get(n, norm(n)) for n in conda_names - CONDA_ONLY}
    all_pyproject = deps.union(*extras.values())

    if self_installs:
        # The project is installed by pip: its dependencies come from pyproject.toml.
        for m in self_installs:
            for extra in filter(None, (m.group("extras") or "").split(",")):
                assert extra.strip() in extras, f"environment.yml 要求的 extra [{extra}] 在 pyproject.toml 中不存在"
        stray = (explicit_pip | explicit_conda) - all_pyproject
        assert not stray, f"environment.yml 多列了 pyproject.toml 中没有的包: {sorted(stray)}"
    else:
        named = explicit_pip | explicit_conda
        assert named == deps, (
            "environment.yml 与 pyproject.toml 的依赖不一致：仅 environment.yml "
            f"{sorted(named - deps)}，仅 pyproject.toml {sorted(deps - named)}"
        )
