"""The repository's contracts: dependency files in step, the two commands, a light import."""

import re
import subprocess
import sys

import tomllib
import yaml
from conftest import REPO
from packaging.requirements import Requirement

import detlab


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = str(req.specifier)
    return pins


def _conda_pip_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = {}
    for line in pip_section:
        if not line.startswith("-"):
            req = Requirement(line)
            reqs[req.name.lower()] = str(req.specifier)
    return env, pip_section, reqs


def test_environment_yml_lists_the_pyproject_packages():
    project = _pyproject()["project"]
    declared = {}
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        declared[req.name.lower()] = str(req.specifier)
    env, pip_section, conda = _conda_pip_requirements()
    assert set(conda) == set(declared), "environment.yml and pyproject.toml list other packages"
    pins = _pins()
    for name, spec in declared.items():
        expected = pins.get(name, spec)  # pinned packages carry the constraints pin
        assert conda[name] == expected, f"{name}: environment.yml has {conda[name]!r}"
    assert "-e ." in pip_section
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    required = Requirement("python" + project["requires-python"]).specifier
    assert python.split("=")[1] + ".0" in required


def test_torch_pins_live_in_the_constraints_file():
    assert _pins() == {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    makefile = (REPO / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert re.search(r"^\$\(STAMP\): .*pyproject\.toml.*constraints\.txt", makefile, re.M)


def test_installed_torch_matches_the_pins():
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == "2.14.1"
    assert torchvision.__version__.split("+")[0] == "0.29.1"


def test_ci_runs_make_test():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111


def test_readme_states_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_version_matches_pyproject():
    assert detlab.__version__ == _pyproject()["project"]["version"]


def test_import_detlab_loads_no_heavy_package():
    heavy = ["torch", "torchvision", "matplotlib", "pandas", "pycocotools", "ipywidgets",
             "papermill", "yaml", "numpy", "PIL"]
    code = ("import sys, detlab, detlab.config, detlab.registry; "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []


def test_public_api_resolves():
    for name in detlab.__all__:
        assert getattr(detlab, name) is not None


def test_subpackage_exports_resolve():
    import detlab.evaluation
    import detlab.viz
    import detlab.viz.widgets

    for module in (detlab.evaluation, detlab.viz, detlab.viz.widgets):
        for name in module.__all__:
            assert callable(getattr(module, name)), f"{module.__name__}.{name}"
