"""The diagnostic scripts (scripts/bench_step.py, scripts/profile_stage.py) share the CLI's options for
where stages, presets and data come from: a user's preset directory works there too, and bad input is
one line with exit status 2."""

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_rows(out: str) -> dict[str, dict[str, float]]:
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\w+)\s+([\d.]+) s/step .* loss ([\d.]+)", line)
        if m:
            rows[m.group(1)] = {"step": float(m.group(2)), "loss": float(m.group(3))}
    return rows


def test_bench_step_variants_train_the_same_net(capsys):
    # the memory format changes the kernels, not the arithmetic: the same loss after the same batches
    code = load_script("bench_step").main(["--stage", "tta", "--preset", "smoke", "--variants", "eager,nchw,foreach",
                                           "--steps", "2", "--warmup", "1", "--precision", "fp32"])
    out = capsys.readouterr().out
    assert code == 0
    rows = bench_rows(out)
    assert set(rows) == {"eager", "nchw", "foreach"}
    for name in ("nchw", "foreach"):
        assert rows[name]["loss"] == pytest.approx(rows["eager"]["loss"], rel=1e-3)
    # a smoke-preset tta net stepped twice has not learnt anything yet: its loss is near ln(10)
    assert rows["eager"]["loss"] == pytest.approx(2.3026, rel=0.2)


def test_scripts_read_a_users_preset_directory(tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.toml").write_text("epochs = 1\nwidth_divisor = 16\ntrain_images = 256\n"
                                                     "test_images = 64\nchannels_last = false\n")
    code = load_script("bench_step").main(["--stage", "resnet9", "--preset", "mine", "--config-dir", str(tmp_path),
                                           "--variants", "eager", "--steps", "1", "--warmup", "0"])
    assert code == 0
    assert "resnet9, preset mine," in capsys.readouterr().out
    code = load_script("profile_stage").main(["--stage", "resnet9", "--preset", "mine", "--config-dir", str(tmp_path),
                                              "--skip", "1", "--steps", "1", "--rows", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"resnet9, preset mine, cpu, \w+: [\d.]+ s per profiled step", out)


@pytest.mark.parametrize("script, argv, message", [
    ("bench_step", ["--variants", "eager,warp"], "unknown variant 'warp'"),
    ("bench_step", ["--preset", "smoke", "--threads", "0"], "--threads must be at least 1"),
    ("bench_step", ["--preset", "huge"], "unknown preset 'huge'"),
    ("profile_stage", ["--stage", "resnet10"], "resnet10"),
    ("profile_stage", ["--preset", "smoke", "--steps", "0"], "--steps must be at least 1"),
])
def test_scripts_bad_input_is_one_line(capsys, script, argv, message):
    assert load_script(script).main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the guard of a machine without CUDA")
def test_gpu_check_refuses_a_machine_without_cuda_before_writing_anything(tmp_path):
    # the check must never start CPU runs that would be mistaken for GPU records: one line, exit 2, no log dir
    import subprocess
    import sys
    log_dir = tmp_path / "gpu-check"
    for args in (["--quick"], []):
        proc = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), *args, "synthetic", str(log_dir)],
                              env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"error: {sys.executable} cannot import torch or sees no CUDA device (torch.cuda.is_available() is False)"]
        assert not log_dir.exists()


def test_gpu_check_quick_runs_every_step_and_reports_a_failed_one(tmp_path):
    # a stand-in interpreter that claims CUDA and records what it is asked to run: the control flow of the
    # check without a GPU. One failing step must not stop the rest, and the check's exit status says it failed.
    import subprocess
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1" in
  -c) exit 0;;
  -) cat >/dev/null; echo "torch fake";;
  -m) echo "$*" >> {calls}
      [[ "$*" == *"--junitxml"* ]] && echo "<skipped>$PWD/tests/test_gpu.py:89</skipped>" > "${{@: -1}}"
      [[ "$*" == *"--stage tta"* ]] && exit 3; exit 0;;
esac
""")
    fake.chmod(0o755)
    log_dir = tmp_path / "logs"
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--quick", "DATA", str(log_dir)],
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)}, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "!! tta, 2 runs: exit status 3" in proc.stdout
    # the CUDA tests' results name files relative to the checkout, not by this machine's absolute path
    assert (log_dir / "pytest-gpu.xml").read_text() == "<skipped>tests/test_gpu.py:89</skipped>\n"
    common = f"-m repro.resnet --preset full --device cuda --data DATA --log-dir {log_dir}"
    assert calls.read_text().splitlines() == [
        f"-m pytest -m gpu -rs -p no:cacheprovider --junitxml {log_dir}/pytest-gpu.xml",
        f"{common} --stage airbench94 --runs 3",
        f"{common} --stage tta --runs 2",
        f"{common} --stage final",
        f"{common} --stage airbench94_muon --runs 2",
        f"-m repro.report --log-dir {log_dir}",
    ]
