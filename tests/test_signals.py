"""SIGTERM is handled like Ctrl-C: the run is logged as interrupted, workers go, exit 143."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repro.errors import (EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, UserError, cli_main,
                          interrupt_exit_code, interrupt_message, signals_deferred)
from repro.runlog import read_records

ROOT = Path(__file__).resolve().parents[1]


def test_cli_main_turns_sigterm_into_exit_143(capsys):
    before = signal.getsignal(signal.SIGTERM)
    reached = []

    @cli_main
    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after kill")  # never: the handler raises first
        return 0

    assert main([]) == 143 == EXIT_TERMINATED
    assert reached == []
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_sigterm_unwinds_like_ctrl_c_and_a_second_one_waits(tmp_path):
    cleaned = []

    @cli_main
    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt as exc:  # what run loops already catch for Ctrl-C
            os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM must not break the cleanup
            cleaned.append((type(exc), interrupt_message(exc), interrupt_exit_code(exc)))
            raise
        return 0

    start = time.perf_counter()
    assert main([]) == 143
    assert time.perf_counter() - start < 5
    assert cleaned == [(Terminated, "terminated (SIGTERM)", 143)]


def test_deferred_sigterm_arrives_after_the_critical_step():
    steps = []

    @cli_main
    def main(argv):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("critical step finished")
        steps.append("never reached")
        return 0

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main([]) == 143
    assert steps == ["critical step finished"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_ctrl_c_is_not_mistaken_for_sigterm():
    exc = KeyboardInterrupt()
    assert (interrupt_message(exc), interrupt_exit_code(exc)) == ("interrupted by the user (Ctrl-C)", 130)
    assert EXIT_INTERRUPTED == 130

    @cli_main
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as err:  # left to the program, as before
        main([])
    assert not isinstance(err.value, Terminated)


def test_user_error_still_one_line_and_2(capsys):
    @cli_main
    def main(argv):
        raise UserError("bad input")

    assert main([]) == 2
    assert capsys.readouterr().err == "error: bad input\n"


def _children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run_and_signal(tmp_path, signum, stage):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "REPRO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "repro.resnet", "--stage", stage, "--preset", "smoke", "--data", "synthetic",
           "--precision", "fp32", "--threads", "1", "--epochs", "50", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait for training to be under way: two epochs done
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if f"{stage} " in output[-1] and "epoch   2" in output[-1]:
                break
        else:
            pytest.fail("no second epoch within 120 s:\n" + "".join(output))
        assert proc.poll() is None, "".join(output)
        workers, until = [], time.monotonic() + 20
        while len(workers) < 4 and time.monotonic() < until:  # the next epoch's workers are up
            time.sleep(0.05)
            workers = _children(proc.pid)
        time.sleep(0.2)  # ... and serving batches
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    while not lines.empty():
        output.append(lines.get())
    return code, "".join(output), workers


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, message", [
    pytest.param(signal.SIGINT, 130, "interrupted by the user (Ctrl-C)", id="ctrl-c"),
    pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM)", id="sigterm"),
])
def test_signal_mid_training_logs_one_interrupted_record(tmp_path, signum, code, message):
    # baseline: 4 fresh DataLoader workers every epoch, so there are workers to clean up
    got, output, workers = _run_and_signal(tmp_path, signum, "baseline")
    assert got == code, output
    assert "Traceback" not in output
    records = read_records(tmp_path / "logs")
    assert len(records) == 1 and records.torn == 0, records
    rec = records[0]
    assert rec["status"] == "interrupted" and rec["error"] == message
    assert rec["stage"] == "baseline" and 2 <= len(rec["epochs"]) < 50
    assert len(workers) == 4, output  # signalled while the epoch's 4 workers ran
    assert [w for w in workers if _alive(w)] == []  # and none outlives the run
