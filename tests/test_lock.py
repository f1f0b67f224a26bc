"""requirements.lock (installed by scripts/setup.sh) pins every dependency pyproject.toml declares, inside
the declared range, and environment.yml installs from the same lock."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    torch_pins = [line for line in (REPO / "torch.in").read_text().splitlines() if line and not line.startswith("#")]
    return [Requirement(r) for r in [*project["dependencies"], *extras, *torch_pins]]


def test_every_declared_dependency_is_pinned_inside_its_range():
    pins = lock_pins()
    assert len(pins) > 50  # the whole environment, not just the direct dependencies
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run scripts/lock.sh"


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_section == ["-r requirements.lock", "-e ."]
