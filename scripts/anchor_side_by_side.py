"""The anchors' own code beside the suite's matching stage, on this machine, one after the other:
accuracy, seconds on airbench's clock (whitening, training, the final TTA pass) and their ratio,
in one table.

    python scripts/anchor_side_by_side.py --cpu                     # airbench94's CPU port vs --stage airbench94
    python scripts/anchor_side_by_side.py --cpu --stage hiverge94 --runs 3 --anchor-runs 1   # the CPU speed goal
    python scripts/anchor_side_by_side.py --limit 60 --runs 25      # on a GPU: every anchor and its stage

The anchors (``../shared/anchors``, or ``--anchors DIR``) are other projects' scripts, run
unmodified as measuring instruments: on a GPU from a scratch folder holding the data cache they
read (written from ``--data`` first), on a CPU through the anchors' own port (``cpu_port.py``).
On a CPU both sides train in one precision: bf16 where the CPU computes it natively (the port's
autocast variant), else fp32 (that variant with its autocast turned off, written beside it).
Each step runs under its time limit; a step that fails or runs out of time is reported, the
runs it finished still count, and the rest goes on. The suite's records go to ``LOG_DIR``; the
table is printed and written to ``LOG_DIR/side_by_side.md``, each step's output beside it;
``--table-only`` rebuilds it from there after runs were added.
Exit status: 0, or 1 when a step failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # runs from a checkout without installing it

from repro.devices import cpu_supports_bf16  # noqa: E402
from repro.errors import UserError  # noqa: E402
from repro.resnet.config import available_stages  # noqa: E402
from repro.resnet.ladder import fmt_mean_std, fmt_p, one_sample_p, welch_p  # noqa: E402
from repro.resnet.records import logged_runs  # noqa: E402
from repro.runlog import read_records  # noqa: E402


@dataclass(frozen=True)
class Pair:
    """An anchor script (under the anchors folder) and the suite's stage that reproduces it.
    ``anchor_limit`` and ``suite_limit``: each side's step gets this many times ``--limit`` (more where it
    compiles first)."""

    script: str
    stage: str
    suite_options: tuple[str, ...] = ()
    anchor_limit: float = 1.0
    suite_limit: float = 1.0


PAIRS = {
    "airbench94": Pair("airbench/airbench94.py", "airbench94"),
    "airbench94_compiled": Pair("airbench/airbench94_compiled.py", "airbench94", ("--compile",), 1.5, 1.5),
    "airbench94_muon": Pair("airbench/airbench94_muon.py", "airbench94_muon"),
    "hiverge94": Pair("hiverge/cifar10_speedrun.py", "hiverge94", (), 2.0),  # it compiles, the suite's stage does not
}
CPU_PAIR = "airbench94_cpu"  # the port the anchors' cpu_port.py writes, beside --stage (airbench94 by default)
PORT_AUTOCAST = "airbench94_cpu_autocast.py"  # fp32 weights under bf16 autocast, as the suite trains in bf16
PORT_FP32 = "airbench94_cpu_fp32.py"  # the same with autocast off: written here for CPUs without native bf16
PORT_AUTOCAST_CALL = "torch.autocast('cpu', dtype=torch.bfloat16)"


def write_fp32_port(work: Path) -> Path:
    """The port's autocast variant with its two autocast blocks disabled (``enabled=False``), every
    edited line marked ``# FP32-VARIANT``: on a CPU that emulates bf16 the port would otherwise run
    at a hundredth of the fp32 rate, and the suite's ``auto`` trains in fp32 there."""
    lines = (work / PORT_AUTOCAST).read_text().splitlines(keepends=True)
    edited = [i for i, line in enumerate(lines) if PORT_AUTOCAST_CALL in line]
    if len(edited) != 2:
        raise UserError(f"{PORT_AUTOCAST}: expected 2 autocast blocks to turn off, found {len(edited)}")
    for i in edited:
        code = lines[i].rstrip("\n").split("  #", 1)[0]
        lines[i] = code.replace(PORT_AUTOCAST_CALL, PORT_AUTOCAST_CALL[:-1] + ", enabled=False)") + \
            "  # FP32-VARIANT: autocast off\n"
    (work / PORT_FP32).write_text("".join(lines))
    return work / PORT_FP32


@dataclass(frozen=True)
class AnchorRun:
    run: str
    accuracy: float  # the run's TTA accuracy, a fraction
    seconds: float  # airbench's clock: CUDA events (perf_counter in the port) around what it times


def parse_anchor_output(text: str) -> list[AnchorRun]:
    """Every finished run in an anchor's console: its table's rows with ``tta_val_acc`` filled
    (one per run; the per-epoch rows leave it empty), the warm-up run left out (airbench prints a
    run's number, or ``warmup``, on its first row only). The columns
    are read from the table's header, whose time column is ``total_time_seconds`` (airbench94)
    or ``time_seconds`` (airbench94_muon, hiverge)."""
    header: list[str] | None = None
    runs, run = [], ""
    for line in text.splitlines():  # hiverge's running means end in \r: their own lines here
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if "tta_val_acc" in cells:
            header = cells
            continue
        if header is None or len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        run = row.get("run") or run  # airbench prints a run's number on its first row only
        seconds = row.get("total_time_seconds") or row.get("time_seconds")
        if not row.get("tta_val_acc") or not seconds or run == "warmup":
            continue
        runs.append(AnchorRun(run, float(row["tta_val_acc"]), float(seconds)))
    return runs


def run_step(title: str, command: list[str], limit: float, out: Path, *, cwd: Path, env: dict) -> bool:
    """Run ``command`` for at most ``limit`` seconds (then SIGTERM, which the suite records as an
    interrupted run, and SIGKILL 15 s later), its output shown and kept in ``out``. Whether it
    finished with status 0."""
    print(f"== {title} (at most {limit:.0f} s)", flush=True)
    with open(out, "w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        timer = _Alarm(proc, limit)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        proc.wait()
        timer.cancel()
    if timer.fired or proc.returncode != 0:
        why = "ran out of time" if timer.fired else f"exit status {proc.returncode}"
        print(f"!! {title}: {why}", flush=True)
        return False
    return True


class _Alarm:
    """SIGTERM to a process group after ``seconds``, SIGKILL 15 s after that."""

    def __init__(self, proc: subprocess.Popen, seconds: float):
        import threading

        self.proc, self.fired = proc, False
        self.timer = threading.Timer(seconds, self._stop)
        self.timer.daemon = True
        self.timer.start()

    def _stop(self):
        self.fired = True
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 0)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(grace)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    def cancel(self):
        self.timer.cancel()


def suite_runs(log_dir: Path) -> list[tuple[float, float]]:
    """(accuracy, seconds on airbench's clock) of every ok run recorded in ``log_dir``."""
    return [(r.test_accuracy, r.seconds_on("airbench")) for r in logged_runs(read_records(log_dir))
            if r.measured and r.test_accuracy is not None]


def table(rows: list[tuple[str, str, list[tuple[float, float]]]], target: float) -> list[str]:
    """Markdown lines: per pair the anchor's row then the suite's, the suite's with its ratio of
    mean seconds to the anchor's and Welch's p for the accuracies."""
    head = ["pair", "side", "n", "accuracy", "seconds (airbench clock)", "suite ÷ anchor", f"≥{100 * target:g}%",
            "p(mean > target)", "p(acc, Welch)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    anchors: dict[str, list[tuple[float, float]]] = {}
    for pair, side, runs in rows:
        accs, secs = [a for a, _ in runs], [s for _, s in runs]
        ratio = p_acc = "-"
        if side == "suite" and anchors.get(pair) and secs:
            anchor_accs, anchor_secs = zip(*anchors[pair])
            ratio = f"{statistics.fmean(secs) / statistics.fmean(anchor_secs):.3f}"
            p_acc = fmt_p(welch_p(list(anchor_accs), accs))
        if side == "anchor":
            anchors[pair] = runs
        lines.append(f"| {pair} | {side} | {len(runs)} | {fmt_mean_std(accs, 100, 2, '%')} | "
                     f"{fmt_mean_std(secs, 1, 2)} | {ratio} | {sum(a >= target for a in accs)}/{len(runs)} | "
                     f"{fmt_p(one_sample_p(accs, target))} | {p_acc} |")
    return lines


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python scripts/anchor_side_by_side.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help=f"which anchors, comma-separated (default all: {', '.join(PAIRS)}); ignored with --cpu")
    p.add_argument("--cpu", action="store_true",
                   help="airbench94's CPU port (the anchors' cpu_port.py) beside the suite's --stage on the CPU")
    p.add_argument("--stage", default="airbench94",
                   help="with --cpu: the suite's stage beside the port (default airbench94; hiverge94, the "
                        "suite's fastest 94%% recipe, for the speed goal)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="with --cpu: both sides' arithmetic (default auto: bf16 where this CPU computes it "
                        "natively, else fp32, the port's autocast turned off)")
    p.add_argument("--anchors", default=str(CHECKOUT.parent / "shared" / "anchors"),
                   help="the anchors folder (default: ../shared/anchors beside the checkout)")
    p.add_argument("--data", default=str(CHECKOUT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"),
                   help="the CIFAR-10 JPEG archive both sides train on (default: ../shared/data/cifar10-jpeg.tar.gz)")
    p.add_argument("--runs", type=int, default=None,
                   help="runs per side (default: 25 on a GPU, as many as the limit allows; 1 with --cpu)")
    p.add_argument("--anchor-runs", type=int, default=None,
                   help="with --cpu: the port's runs, when they differ from the suite's --runs")
    p.add_argument("--limit", type=float, default=None,
                   help="seconds per step, each side of each pair (default: 150 on a GPU, 3600 with --cpu)")
    p.add_argument("--target", type=float, default=0.905,
                   help="the accuracy the runs are counted against (default 0.905: the JPEG copy tops out near "
                        "90.7%%; 0.94 on the official images)")
    p.add_argument("--python", default=sys.executable, help="the interpreter both sides run with")
    p.add_argument("--log-dir", default=None, help="default logs/side-by-side-<UTC date and time>")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rebuild the table from --log-dir's outputs and records (after runs were "
                        "added there, e.g. python -m repro.resnet ... --seed 2 --log-dir LOG_DIR/suite-NAME)")
    args = p.parse_args(argv)
    pairs = [CPU_PAIR] if args.cpu else [name.strip() for name in args.pairs.split(",") if name.strip()]
    unknown = [name for name in pairs if name not in PAIRS and name != CPU_PAIR]
    if unknown:
        raise UserError(f"unknown pair {unknown[0]!r}; valid: {', '.join(PAIRS)}")
    if any(n is not None and n < 1 for n in (args.runs, args.anchor_runs)) or \
            (args.limit is not None and args.limit <= 0):
        raise UserError("--runs and --anchor-runs must be at least 1 and --limit above 0")
    if args.table_only and not (args.log_dir and Path(args.log_dir).is_dir()):
        raise UserError("--table-only needs --log-dir, an existing folder of an earlier side-by-side run")
    if args.cpu and args.stage not in available_stages():
        raise UserError(f"--stage: no stage {args.stage!r}; see python -m repro.resnet --list")
    if args.precision == "auto":
        args.precision = "bf16" if cpu_supports_bf16() else "fp32"
    args.pairs = pairs
    args.runs = args.runs or (1 if args.cpu else 25)
    args.anchor_runs = args.anchor_runs or args.runs
    args.limit = args.limit or (3600.0 if args.cpu else 150.0)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    anchors, data = Path(args.anchors).resolve(), Path(args.data).resolve()
    needed = () if args.table_only else ((anchors / "cpu_port.py", "--anchors"), (data, "--data"))
    for path, what in needed:
        if not path.exists():
            print(f"error: {what}: {path} does not exist", file=sys.stderr)
            return 2
    log_dir = Path(args.log_dir or f"logs/side-by-side-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}").resolve()
    work = log_dir / "anchor-run"  # the anchors write their data cache and logs/ here
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, (str(CHECKOUT), os.environ.get("PYTHONPATH"))))}
    py, ok, rows = args.python, True, []
    if args.table_only:
        print(f"== the table rebuilt from {log_dir}, nothing run", flush=True)
    elif args.cpu:  # the port's files go where it runs
        work.mkdir(parents=True, exist_ok=True)
        ok &= run_step("the CPU port of airbench94, written", [py, str(anchors / "cpu_port.py")], 120,
                       log_dir / "port.txt", cwd=work, env=env)
        if ok and args.precision == "fp32":
            try:
                print(f"== the port's fp32 variant, written: {write_fp32_port(work).name}", flush=True)
            except UserError as exc:
                print(f"!! {exc}", flush=True)
                ok = False
    else:
        work.mkdir(parents=True, exist_ok=True)
        ok &= run_step("the anchors' data cache", [py, str(anchors / "cifar10_pt_from_jpeg.py"), str(data), "cifar10"],
                       300, log_dir / "data-cache.txt", cwd=work, env=env)
    for name in args.pairs:
        port = PORT_AUTOCAST if args.precision == "bf16" else PORT_FP32
        pair = PAIRS.get(name, Pair(port, args.stage, ("--device", "cpu", "--precision", args.precision)))
        label = f"{name} ({args.precision}) vs {args.stage}" if args.cpu else name
        anchor_out, suite_log = log_dir / f"anchor-{name}.txt", log_dir / f"suite-{name}"
        if not args.table_only:
            if args.cpu:
                command = [py, str(work / pair.script), "--runs", str(args.anchor_runs)]
                env_anchor = {**env, "JPEG_TAR": str(data), "PORT_DIR": str(work)}
            else:
                command, env_anchor = [py, str(anchors / pair.script)], env
            ok &= run_step(f"{name}: the anchor", command, args.limit * pair.anchor_limit, anchor_out,
                           cwd=work, env=env_anchor)
            ok &= run_step(f"{name}: the suite's {pair.stage}",
                           [py, "-m", "repro.resnet", "--stage", pair.stage, "--preset", "full", "--runs",
                            str(args.runs), "--data", str(data), "--log-dir", str(suite_log), "--quiet",
                            *pair.suite_options],
                           args.limit * pair.suite_limit, log_dir / f"suite-{name}.txt", cwd=CHECKOUT, env=env)
        anchor_runs = parse_anchor_output(anchor_out.read_text()) if anchor_out.exists() else []
        rows.append((label, "anchor", [(r.accuracy, r.seconds) for r in anchor_runs]))
        rows.append((label, "suite", suite_runs(suite_log)))
    lines = table(rows, args.target)
    (log_dir / "side_by_side.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"table and each step's output: {log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
