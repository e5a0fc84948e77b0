"""A non-editable install works from any directory: the configs ship inside the wheel."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from repro.resnet.config import load_preset
from repro.errors import UserError
from repro.runlog import read_records

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built into a wheel from a copy of the tree and installed into a bare target dir."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "repro", src / "repro", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp / "wheels"
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "-q", "-w", str(wheels), str(src)], cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = wheels.glob("repro-*.whl")
    target = tmp / "site"
    out = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                str(wheel)], cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "REPRO_CACHE": str(tmp / "cache")}
    env.pop("REPRO_CONFIGS", None)
    return wheel, target, elsewhere, env


def test_wheel_ships_every_config(installed):
    wheel, target, _, _ = installed
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("repro/configs/")}
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "repro" / "configs").rglob("*.toml")}
    assert in_tree and shipped == in_tree
    assert {"repro/configs/presets/smoke.toml", "repro/configs/resnet/final.toml"} <= shipped


@pytest.mark.slow
def test_installed_package_runs_a_smoke_stage_from_elsewhere(installed):
    _, target, elsewhere, env = installed
    where = _run([sys.executable, "-c", "import repro; print(repro.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr  # not the checkout
    out = _run([sys.executable, "-m", "repro.resnet", "--stage", "final", "--preset", "smoke", "--data", "synthetic",
                "--precision", "fp32", "--threads", "1", "--quiet", "--log-dir", "logs"], cwd=elsewhere, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    (rec,) = read_records(elsewhere / "logs")
    assert (rec["status"], rec["stage"], rec["preset"], rec["synthetic"]) == ("ok", "final", "smoke", True)
    assert len(rec["epochs"]) == 2 and rec["blog_seconds"] == 297


@pytest.mark.slow
def test_installed_unknown_names_list_what_exists(installed):
    _, target, elsewhere, env = installed
    for option, kind, folder in (("--preset", "presets", "presets"), ("--stage", "stages", "resnet")):
        out = _run([sys.executable, "-m", "repro.resnet", option, "huge", "--data", "synthetic", "--quiet",
                    "--log-dir", "bad-logs"], cwd=elsewhere, env=env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        match = re.search(rf"unknown {kind[:-1]} 'huge'; valid {kind}: (.+)$", out.stderr.strip())
        assert match, out.stderr
        names = [n for n in match.group(1).replace("; measurement presets: ", ", ").split(", ")
                 if n not in ("auto", "all")]
        assert names, out.stderr
        for name in names:  # every name offered is one the installed package has (measurement presets apart)
            assert any(path.is_file() for path in (target / "repro" / "configs" / folder / f"{name}.toml",
                                                   target / "repro" / "configs" / folder / "measure" / f"{name}.toml")
                       ), (name, out.stderr)
    assert not (elsewhere / "bad-logs" / "runs.jsonl").exists()


def test_unknown_preset_lists_the_presets_of_its_directory(tmp_path):
    presets = tmp_path / "configs" / "presets"
    presets.mkdir(parents=True)
    shutil.copy(ROOT / "repro" / "configs" / "presets" / "cpu.toml", presets / "cpu.toml")
    assert load_preset("cpu", tmp_path / "configs").name == "cpu"
    with pytest.raises(UserError) as err:
        load_preset("smoke", tmp_path / "configs")
    assert str(err.value) == "unknown preset 'smoke'; valid presets: auto, cpu"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up and run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = {line.split("#", 1)[1].strip(): line.split("#", 1)[0].strip()
                for line in setup.splitlines() if "#" in line}
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines() if not line.strip().startswith("#")]
    test_command = commands["the test suite"]
    assert test_command == "pytest"
    assert any(line.split("||")[0].strip() == test_command for line in ci_lines), ci
    assert "python3 -m venv --clear .venv-ci" in ci_lines
    assert 'pip install -q -e ".[dev]"' in ci_lines and "pip install torch==2.14.1 torchvision==0.29.1" in readme
    assert "pip install -q torch==2.14.1 torchvision==0.29.1" in ci_lines
    assert '"$status" -eq 5' in ci  # no tests collected is a failure, not a pass
