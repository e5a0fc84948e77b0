"""The diagnostic scripts (scripts/bench_step.py, scripts/profile_stage.py) share the CLI's options for
where stages, presets and data come from: a user's preset directory works there too, and bad input is
one line with exit status 2."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    import sys

    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
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
      exit 0;;
  scripts/anchor_side_by_side.py) echo "$*" >> {calls}
      mkdir -p "${{@: -3:1}}/suite-airbench94" && touch "${{@: -3:1}}/suite-airbench94/runs.jsonl"; exit 3;;
esac
""")
    fake.chmod(0o755)
    log_dir = tmp_path / "logs"
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--quick", "DATA", str(log_dir)],
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)}, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "!! the anchors beside the suite: exit status 3" in proc.stdout
    # the CUDA tests' results name files relative to the checkout, not by this machine's absolute path
    assert (log_dir / "pytest-gpu.xml").read_text() == "<skipped>tests/test_gpu.py:89</skipped>\n"
    assert calls.read_text().splitlines() == [
        f"-m pytest -m gpu -rs -p no:cacheprovider --junitxml {log_dir}/pytest-gpu.xml",
        f"scripts/anchor_side_by_side.py --python {fake} --data DATA --log-dir {log_dir}/side-by-side --limit 40",
        f"-m repro.report --log-dir {log_dir}/side-by-side/suite-airbench94 --out {log_dir}/report",
    ]


ANCHOR_OUTPUT = Path(__file__).parent / "fixtures" / "anchors"


def test_the_anchor_parser_reads_each_finished_run_from_the_table():
    parse = load_script("anchor_side_by_side").parse_anchor_output
    airbench = parse((ANCHOR_OUTPUT / "airbench94_gpu.txt").read_text())
    assert [(r.run, r.accuracy, r.seconds) for r in airbench] == [("0", 0.9402, 3.8312), ("1", 0.9391, 3.802)]
    # hiverge: its own time column, a warm-up run left out, running means that end in a carriage return
    hiverge = parse((ANCHOR_OUTPUT / "hiverge_gpu.txt").read_text())
    assert [(r.run, r.accuracy, r.seconds) for r in hiverge] == [("1", 0.9405, 2.0131), ("2", 0.9398, 2.0174),
                                                                  ("3", 0.9411, 2.0102)]
    assert parse("no table here\n| run | epoch |\n") == []


def test_the_anchor_parser_agrees_with_the_ports_own_run_lines():
    """A console captured from airbench's own code (the CPU port; see the fixtures' README): each run
    is printed twice, a table row and the port's own line, and the table's rows carry the run's
    number on its first row only; the parser reads the table."""
    text = (ANCHOR_OUTPUT / "airbench94_cpu_port.txt").read_text()
    runs = load_script("anchor_side_by_side").parse_anchor_output(text)
    own = re.findall(r"run (\d+): tta_val_acc=([\d.]+)  timed_seconds\(original boundaries\)=([\d.]+)", text)
    assert len(runs) == len(own) >= 1
    for run, (number, accuracy, seconds) in zip(runs, own):
        assert (run.run, run.accuracy) == (number, float(accuracy)) and run.seconds == pytest.approx(float(seconds),
                                                                                                      abs=0.005)
    mean = float(re.search(r"Mean: ([\d.]+)", text).group(1))
    assert sum(r.accuracy for r in runs) / len(runs) == pytest.approx(mean, abs=5e-5)


def test_a_warm_up_run_numbered_on_its_first_row_only_is_left_out():
    """airbench94_muon runs main('warmup') first; like every run, its name is on its first row only."""
    parse = load_script("anchor_side_by_side").parse_anchor_output
    header = "|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |"
    rows = ["|  warmup  |      0  |  1.0  |  0.1  |  0.1  |          |  9.0  |",
            "|          |   eval  |  1.0  |  0.1  |  0.1  |  0.1000  |  9.5  |",
            "|       0  |      0  |  1.0  |  0.9  |  0.9  |          |  2.0  |",
            "|          |   eval  |  1.0  |  0.9  |  0.9  |  0.9401  |  2.6  |"]
    assert [(r.run, r.accuracy, r.seconds) for r in parse("\n".join([header, *rows]))] == [("0", 0.9401, 2.6)]


def test_side_by_side_runs_every_step_and_reports_a_failed_one(tmp_path, capsys):
    """A stand-in interpreter (no GPU, no anchors run): it prints a captured anchor console for an
    anchor script, writes two records for each suite stage, and fails hiverge's anchor. The table's ratio is
    the suite's mean seconds over the anchor's; a failed step is said and the rest goes on."""
    import shutil
    import sys

    anchors = tmp_path / "anchors"
    for script in ("cpu_port.py", "cifar10_pt_from_jpeg.py", "airbench/airbench94.py", "hiverge/cifar10_speedrun.py"):
        (anchors / script).parent.mkdir(parents=True, exist_ok=True)
        (anchors / script).write_text("")
    shutil.copy(ANCHOR_OUTPUT / "airbench94_gpu.txt", anchors / "airbench" / "out.txt")
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_text("")
    fake = tmp_path / "python"
    fake.write_text(f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
if args[0] == "-m":
    log = pathlib.Path(args[args.index("--log-dir") + 1]); log.mkdir(parents=True)
    stage = args[args.index("--stage") + 1]
    with open(log / "runs.jsonl", "w") as f:
        for acc, secs in ((0.9400, 3.0), (0.9420, 3.4)):
            f.write(json.dumps({{"experiment": "resnet", "stage": stage, "status": "ok", "total_seconds": 9.0,
                                "test_accuracy": acc, "seconds_by_timing": {{"airbench": secs}}}}) + "\\n")
elif args[0].endswith("airbench94.py"):
    print(open(pathlib.Path(args[0]).parent / "out.txt").read())
elif args[0].endswith("cifar10_speedrun.py"):
    sys.exit(3)
""")
    fake.chmod(0o755)
    code = load_script("anchor_side_by_side").main(
        ["--pairs", "airbench94,hiverge94", "--anchors", str(anchors), "--data", str(data), "--python", str(fake),
         "--log-dir", str(tmp_path / "logs"), "--limit", "60", "--target", "0.94"])
    out = capsys.readouterr().out
    assert code == 1 and "!! hiverge94: the anchor: exit status 3" in out
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in (tmp_path / "logs" / "side_by_side.md").read_text().splitlines()[2:]}
    assert rows[("airbench94", "anchor")][:3] == ["2", "93.97 ± 0.08%", "3.82 ± 0.02"]
    suite = rows[("airbench94", "suite")]
    assert suite[:3] == ["2", "94.10 ± 0.14%", "3.20 ± 0.28"]
    assert float(suite[3]) == pytest.approx(3.2 / ((3.8312 + 3.802) / 2), abs=5e-4)  # suite ÷ anchor seconds
    assert suite[4] == "2/2" and rows[("airbench94", "anchor")][4] == "1/2"
    assert rows[("hiverge94", "anchor")][0] == "0" and rows[("hiverge94", "suite")][:2] == ["2", "94.10 ± 0.14%"]


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "airbench99"], "unknown pair 'airbench99'; valid: airbench94"),
    (["--runs", "0"], "--runs and --anchor-runs must be at least 1 and --limit above 0"),
    (["--cpu", "--anchor-runs", "0"], "--runs and --anchor-runs must be at least 1 and --limit above 0"),
    (["--cpu", "--stage", "airbench99"], "--stage: no stage 'airbench99'; see python -m repro.resnet --list"),
    (["--cpu", "--table-only"], "--table-only needs --log-dir, an existing folder of an earlier side-by-side run")])
def test_side_by_side_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert load_script("anchor_side_by_side").main([*argv, "--log-dir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "logs").exists()


CPU_PORT = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "cpu_port.py"


@pytest.mark.skipif(not CPU_PORT.exists(), reason="../shared/anchors/cpu_port.py not present")
def test_the_ports_fp32_variant_turns_off_exactly_its_two_autocast_blocks(tmp_path):
    """On a CPU without native bf16 the port's autocast would run at the emulated rate; the fp32
    variant differs from the autocast variant in those two lines only, each marked and disabled."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(CPU_PORT)], cwd=tmp_path, check=True, capture_output=True)
    fp32 = load_script("anchor_side_by_side").write_fp32_port(tmp_path)
    before = (tmp_path / "airbench94_cpu_autocast.py").read_text().splitlines()
    after = fp32.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and len(changed) == 2
    for old, new in changed:
        assert "dtype=torch.bfloat16)" in old and "dtype=torch.bfloat16, enabled=False)" in new
        assert new.endswith("# FP32-VARIANT: autocast off")
    compile(fp32.read_text(), str(fp32), "exec")  # still Python


def test_the_fp32_variant_refuses_a_port_it_does_not_recognise(tmp_path):
    from repro.errors import UserError

    (tmp_path / "airbench94_cpu_autocast.py").write_text("with torch.autocast('cpu', dtype=torch.bfloat16):\n")
    with pytest.raises(UserError, match="expected 2 autocast blocks to turn off, found 1"):
        load_script("anchor_side_by_side").write_fp32_port(tmp_path)


def test_side_by_side_on_a_cpu_runs_the_fp32_port_beside_the_chosen_stage(tmp_path, capsys):
    """--cpu --precision fp32 --stage hiverge94: the stand-in interpreter writes a port with two
    autocast blocks, prints the port's captured console for the fp32 variant only, and records two
    suite runs; each side gets its own number of runs and the suite trains in the same precision."""
    import shutil
    import sys

    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "cpu_port.py").write_text("")
    shutil.copy(ANCHOR_OUTPUT / "airbench94_cpu_port.txt", anchors / "out.txt")
    data = tmp_path / "cifar10-jpeg.tar.gz"
    data.write_text("")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"""#!{sys.executable}
import json, pathlib, sys
args = sys.argv[1:]
with open({str(calls)!r}, "a") as f:
    f.write(" ".join(pathlib.Path(a).name if a.endswith(".py") else a for a in args) + "\\n")
if args[0] == "-m":
    log = pathlib.Path(args[args.index("--log-dir") + 1]); log.mkdir(parents=True)
    with open(log / "runs.jsonl", "w") as f:
        for acc, secs in ((0.9050, 60.0), (0.9070, 80.0)):
            f.write(json.dumps({{"experiment": "resnet", "stage": "hiverge94", "status": "ok", "total_seconds": 99.0,
                                "test_accuracy": acc, "seconds_by_timing": {{"airbench": secs}}}}) + "\\n")
elif args[0].endswith("cpu_port.py"):
    pathlib.Path("airbench94_cpu_autocast.py").write_text(
        "with torch.autocast('cpu', dtype=torch.bfloat16):  # AUTOCAST-VARIANT\\n" * 2)
elif args[0].endswith("airbench94_cpu_fp32.py"):
    print(open({str(anchors / "out.txt")!r}).read())
else:
    sys.exit(5)
""")
    fake.chmod(0o755)
    code = load_script("anchor_side_by_side").main(
        ["--cpu", "--precision", "fp32", "--stage", "hiverge94", "--runs", "2", "--anchor-runs", "1",
         "--anchors", str(anchors), "--data", str(data), "--python", str(fake), "--log-dir", str(tmp_path / "logs")])
    assert code == 0, capsys.readouterr().out
    port_call, anchor_call, suite_call = calls.read_text().splitlines()
    assert port_call == "cpu_port.py" and anchor_call == "airbench94_cpu_fp32.py --runs 1"
    assert " --stage hiverge94 --preset full --runs 2 " in suite_call
    assert suite_call.endswith("--device cpu --precision fp32")
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in (tmp_path / "logs" / "side_by_side.md").read_text().splitlines()[2:]]
    assert [r[:3] for r in rows] == [["airbench94_cpu (fp32) vs hiverge94", "anchor", "1"],
                                     ["airbench94_cpu (fp32) vs hiverge94", "suite", "2"]]
    assert rows[0][3:5] == ["17.19%", "110.17"]
    assert float(rows[1][5]) == pytest.approx(70.0 / 110.17, abs=5e-4)  # suite ÷ the port's seconds

    # a third suite run added by hand (another seed), then the table rebuilt without running anything
    with open(tmp_path / "logs" / "suite-airbench94_cpu" / "runs.jsonl", "a") as f:
        f.write(json.dumps({"experiment": "resnet", "stage": "hiverge94", "status": "ok", "total_seconds": 99.0,
                            "test_accuracy": 0.9060, "seconds_by_timing": {"airbench": 90.0}}) + "\n")
    code = load_script("anchor_side_by_side").main(
        ["--cpu", "--precision", "fp32", "--stage", "hiverge94", "--table-only", "--log-dir", str(tmp_path / "logs"),
         "--anchors", str(tmp_path / "nowhere"), "--data", str(tmp_path / "nothing.tar.gz")])
    assert code == 0 and len(calls.read_text().splitlines()) == 3  # nothing ran
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in (tmp_path / "logs" / "side_by_side.md").read_text().splitlines()[2:]]
    assert rows[0][2:5] == ["1", "17.19%", "110.17"]
    assert rows[1][2:4] == ["3", "90.60 ± 0.10%"]
    assert float(rows[1][5]) == pytest.approx((60.0 + 80.0 + 90.0) / 3 / 110.17, abs=5e-4)

