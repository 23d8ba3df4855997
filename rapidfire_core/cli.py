"""The ``rapidfire`` command.

    rapidfire demo [--model M] [--dataset D] [--experiment-path P] [--num-chunks N] [--max-steps S]
    rapidfire info
    rapidfire runs EXPERIMENT [--json]
    rapidfire stop|resume|delete EXPERIMENT RUN [--no-wait | --wait] [--timeout S]
    rapidfire clone EXPERIMENT RUN [--set KNOB=VALUE ...] [--warm-start] [--no-wait | --wait] [--timeout S]
    rapidfire dashboard [EXPERIMENTS_PATH] [--host H] [--port P] [--token T | --no-token]
                        [--allow-code-edits]

EXPERIMENT is a name under the experiments root (--experiment-path, default $RF_EXPERIMENT_PATH
or ./rapidfire_experiments) or a path to an experiment directory.

Steering commands (stop, resume, delete, clone) become rows in the experiment's command store;
the process training the experiment applies them at a run's next optimizer step. Exit status:
0 applied (or queued, with --no-wait), 1 the command failed (its error is printed), 2 a usage
error (unknown experiment or run, bad --set), 3 not applied in time, or no process is training
the experiment now (the command stays pending; --wait waits for one anyway).

Heavy imports (torch, transformers, TRL) happen inside the subcommands, so
``rapidfire --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_APPLIED = 1, 2, 3
STEERING_OPS = ("stop", "resume", "delete", "clone")
DEFAULT_TIMEOUT = 120.0
DEFAULT_PORT = 8765


_EXIT_HELP = (
    "The process training the experiment applies the command at the run's next optimizer step. "
    "Exit status: 0 applied (or queued, with --no-wait); 1 the command failed (its error is printed); "
    "2 usage error (unknown experiment or run, bad --set); 3 not applied within --timeout, or no "
    "process is training the experiment now (the command stays pending; --wait waits anyway)."
)


class CliError(Exception):
    """A user error: printed as one line (no traceback), exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from rapidfire_core.demo import DEFAULT_MAX_STEPS  # import-light

    parser = argparse.ArgumentParser(
        prog="rapidfire",
        description=(
            "rapidfire_core: train many TRL fine-tuning configurations at once and compare them early."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the 4-config LoRA SFT sweep (offline tiny model by default)",
        description=(
            "Run the RapidFire SFT cookbook's sweep: 2 LoRA configs (r=8 on q,v; r=32 on q,k,v,o) x "
            "2 learning rates (1e-3, 1e-4), trained chunk by chunk, then print a leaderboard and "
            "where the MLflow store is. With no options it runs offline on CPU in a few minutes, "
            "using a tiny Llama and a generated customer-support dataset."
        ),
    )
    demo.add_argument(
        "--model",
        default=None,
        help=(
            "local model dir or hub id (default: the offline tiny chat Llama, built and cached on first use)"
        ),
    )
    demo.add_argument(
        "--dataset",
        default=None,
        help=(
            "local dataset (save_to_disk dir, json/jsonl/csv/parquet file) or hub id with 'instruction' and "
            "'response' columns, e.g. bitext/Bitext-customer-support-llm-chatbot-training-dataset "
            "(default: a generated customer-support dataset)"
        ),
    )
    demo.add_argument(
        "--experiment-path",
        default=None,
        help="root folder for experiments (default: $RF_EXPERIMENT_PATH or ./rapidfire_experiments)",
    )
    demo.add_argument(
        "--num-chunks",
        type=_positive_int,
        default=4,
        help="chunks the training data is split into (default: 4)",
    )
    demo.add_argument(
        "--max-steps",
        type=_positive_int,
        default=DEFAULT_MAX_STEPS,
        help=f"optimizer steps per run (default: {DEFAULT_MAX_STEPS})",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    demo.add_argument(
        "--no-speedup",
        action="store_true",
        help="skip the closing fused-vs-time-sliced timing of the same configs",
    )

    sub.add_parser(
        "info",
        help="print the build variant, what it can do on this machine and why, and library versions",
        description=(
            "Print rapidfire_core's build variant (cpu / cuXYZ), the NVIDIA driver it found, which "
            "capabilities work here and why not, the native build facts and torch/trl/transformers/peft "
            "versions."
        ),
    )
    _add_steering_parsers(sub)
    return parser


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "experiment", metavar="EXPERIMENT", help="experiment name under the root, or its directory"
    )
    parser.add_argument(
        "--experiment-path",
        default=None,
        metavar="ROOT",
        help="root folder of experiments (default: $RF_EXPERIMENT_PATH or ./rapidfire_experiments)",
    )


def _add_steering_parsers(sub) -> None:
    runs = sub.add_parser(
        "runs",
        help="list an experiment's runs: status, progress, the knobs that vary, latest losses",
        description="List the runs of an experiment (it may be training right now).",
    )
    _experiment_args(runs)
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")

    verbs = {
        "stop": "park a run where it is (it can be resumed)",
        "resume": "continue a STOPPED run exactly where it stopped",
        "delete": "end a run and free its state (its metrics stay)",
        "clone": "start a new run from a run's config with edited knobs (optionally warm-started)",
    }
    for op, text in verbs.items():
        cmd = sub.add_parser(op, help=text, description=f"{text[0].upper()}{text[1:]}.", epilog=_EXIT_HELP)
        _experiment_args(cmd)
        cmd.add_argument("run_id", metavar="RUN", type=_positive_int, help="run id (see `rapidfire runs`)")
        if op == "clone":
            cmd.add_argument(
                "--set",
                dest="changes",
                action="append",
                default=[],
                metavar="KNOB=VALUE",
                help=(
                    "a knob of the new run, by full name (train.learning_rate, peft.r) or short name "
                    "(learning_rate, r); VALUE is read as JSON when it parses (1e-4, 16, true, "
                    '["q_proj"]), else as a string. Repeatable.'
                ),
            )
            cmd.add_argument(
                "--warm-start", action="store_true", help="start from the parent run's current weights"
            )
        waiting = cmd.add_mutually_exclusive_group()
        waiting.add_argument("--no-wait", action="store_true", help="submit the command and return at once")
        waiting.add_argument(
            "--wait",
            action="store_true",
            help="wait even when no process is training the experiment now (one may be starting)",
        )
        cmd.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            metavar="S",
            help=f"seconds to wait for the command to be applied (default: {DEFAULT_TIMEOUT:g})",
        )

    dash = sub.add_parser(
        "dashboard",
        help="serve the live dashboard (runs, metric charts, stop/resume/delete/clone) in a browser",
        description=(
            "Serve the live dashboard over every experiment under EXPERIMENTS_PATH. It listens on "
            "127.0.0.1 unless --host says otherwise. Every request must carry a token, on any address "
            "(other users of this machine can reach 127.0.0.1 too): --token, or your own, generated once "
            "and kept in ~/.rapidfire/dashboard_token (mode 600; $RAPIDFIRE_HOME moves it), printed in the "
            "URL to open. Clone edits that can load code (model_name, model_kwargs, paths, ...) are "
            "refused unless --allow-code-edits. See docs/security.md."
        ),
    )
    dash.add_argument(
        "experiments_path",
        nargs="?",
        default=None,
        metavar="EXPERIMENTS_PATH",
        help="root folder of experiments (default: $RF_EXPERIMENT_PATH or ./rapidfire_experiments)",
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dash.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)"
    )
    access = dash.add_mutually_exclusive_group()
    access.add_argument("--token", default=None, help="require this token on every request")
    access.add_argument(
        "--no-token",
        action="store_true",
        help="require no token (a single-user machine only: anyone on it could steer your runs); "
        "loopback addresses only",
    )
    dash.add_argument(
        "--allow-code-edits",
        action="store_true",
        help="accept clone edits that can make the training process load code or touch files "
        "(model_name, model_kwargs, tokenizer, reward_funcs, paths, ...); refused by default",
    )


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - report, do not crash `info`
        return f"not available ({type(exc).__name__}: {exc})"


def collect_info() -> dict:
    """What ``rapidfire info`` prints, as a dict (``native`` is ``_native.build_info()``)."""
    import rapidfire_core

    info: dict = {"rapidfire_core": getattr(rapidfire_core, "__version__", "?")}
    try:
        from rapidfire_core._native import build_info

        info["native"] = dict(build_info())
    except Exception as exc:  # noqa: BLE001 - the native layer is optional
        info["native"] = {"native_loaded": False, "native_error": f"{type(exc).__name__}: {exc}"}
    info["python"] = sys.version.split()[0]
    for name in ("torch", "transformers", "trl", "peft", "datasets", "mlflow"):
        info[name] = _version(name)
    try:
        import torch

        usable = bool(torch.cuda.is_available())
        info["gpu_usable"] = usable
        info["gpu"] = torch.cuda.get_device_name(0) if usable else None
        info["torch_cuda"] = torch.version.cuda
    except Exception as exc:  # noqa: BLE001
        info["gpu_usable"] = False
        info["gpu"] = f"unknown ({type(exc).__name__}: {exc})"
    from rapidfire_core.build_report import build_report

    info["build"] = build_report(
        info["rapidfire_core"], info["native"], info.get("torch_cuda"), info["gpu_usable"]
    )
    return info


def _print_info(info: dict) -> None:
    from rapidfire_core.build_report import format_report

    native = info.get("native", {})
    print("\n".join(format_report(info["build"])))
    print("native module (rapidfire_core._C):")
    for key, value in native.items():
        print(f"  {key}: {value}")
    print(f"python {info['python']}")
    for name in ("torch", "transformers", "trl", "peft", "datasets", "mlflow"):
        print(f"{name} {info[name]}")
    gpu = info.get("gpu")
    print(f"GPU usable by torch: {'yes' if info.get('gpu_usable') else 'no'}" + (f" ({gpu})" if gpu else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from rapidfire_core.demo.main import run_demo

        board = run_demo(
            model=args.model,
            dataset=args.dataset,
            experiment_path=args.experiment_path,
            num_chunks=args.num_chunks,
            max_steps=args.max_steps,
            quiet=args.quiet,
            compare_sliced=not args.no_speedup,
        )
        failed = board["status"].astype(str).str.upper().eq("FAILED").sum() if not board.empty else 0
        return 1 if board.empty or failed == len(board) else 0
    if args.command == "info":
        _print_info(collect_info())
        return 0
    handlers = {"runs": _cmd_runs, "dashboard": _cmd_dashboard, **dict.fromkeys(STEERING_OPS, _cmd_steer)}
    if args.command in handlers:
        try:
            return handlers[args.command](args)
        except CliError as exc:
            print(f"rapidfire {args.command}: {exc}", file=sys.stderr)
            return exc.code
    parser.print_help()
    return 2


# ---- runs, stop / resume / delete / clone, dashboard --------------------------------------------
def parse_assignments(items: Sequence[str]) -> dict:
    """`--set` items `KNOB=VALUE` -> {KNOB: value}; a value is JSON when it parses (1e-4 -> float,
    16 -> int, true, [..]), else the string as written. CliError for an item without `=`."""
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--set expects KNOB=VALUE (e.g. --set learning_rate=1e-4), got {item!r}")
        try:
            changes[key] = json.loads(text)
        except ValueError:
            changes[key] = text
    return changes


@contextlib.contextmanager
def _open_experiment(args):
    """(experiment dir, RunStore, CommandStore) of args.experiment; CliError if there is none."""
    from rapidfire_core.control import CommandStore, RunStore
    from rapidfire_core.dashboard import experiments

    root = Path(args.experiment_path) if args.experiment_path else experiments.default_root()
    try:
        path = experiments.resolve_experiment(args.experiment, root)
    except experiments.ExperimentNotFound as exc:
        raise CliError(str(exc)) from None
    runs, commands = RunStore(path / experiments.DB_NAME), CommandStore(path / experiments.DB_NAME)
    try:
        yield path, runs, commands
    finally:
        runs.close()
        commands.close()


def _cmd_runs(args) -> int:
    with _open_experiment(args) as (path, runs, commands):
        return _print_runs(args, path, runs, commands)


def _print_runs(args, path, runs, commands) -> int:
    from rapidfire_core.dashboard.summary import LatestMetrics, finite, run_rows

    alive = commands.controller_alive()
    table = run_rows(runs, LatestMetrics(), owner_alive=alive)
    if args.json:
        body = {"experiment": str(path.resolve()), "controller_alive": alive, **table}
        print(json.dumps(finite(body), indent=2))
        return 0
    state = "a process is training it now" if alive else "no process is training it now"
    print(f"experiment {path.name} ({path.resolve()}): {state}")
    if not table["runs"]:
        print("no runs yet")
        return 0
    print(format_runs(table["runs"], table["varying_knobs"]))
    for executor in table["executors"]:  # executors on Ray (docs/scale-out.md)
        state = f"busy {executor['busy_share']:.0%}" if executor["alive"] else "lost"
        print(f"executor {executor['index']}: {executor['node']} {executor['device']}  {state}")
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def format_runs(runs: list[dict], varying: list[str]) -> str:
    """The `rapidfire runs` table: one line per run, the knobs that vary as columns."""
    from rapidfire_core.dashboard.summary import HEADLINE_METRICS

    metrics = [m for m in HEADLINE_METRICS if any(m in r["latest"] for r in runs)] or ["loss"]
    knob_names = [k.split(".")[-1] for k in varying]
    where = any(r.get("where") for r in runs)  # trained by executors: node/device#executor
    header = ["id", "status", "chunks", "step", "resume", "origin", *(["where"] if where else [])]
    header += [*knob_names, *metrics]
    lines = [header]
    for run in runs:
        origin = "-"
        if run["parent_run_id"] is not None:
            origin = f"clone of {run['parent_run_id']} ({'warm' if run['warm_start'] else 'cold'})"
        step = f"{run['global_step']}/{run['max_steps']}" if run["max_steps"] else str(run["global_step"])
        point = run.get("resume_from")
        # the chunk it continues with, counted from 1 as the progress lines count
        resumes = f"chunk{point['chunk'] + 1}:{point['how']}" if point else "-"
        lines.append([
            str(run["run_id"]), run["status"], str(run["chunks_done"]), step, resumes, origin,
            *([run.get("where") or "-"] if where else []),
            *(_cell(run["knobs"].get(k)) for k in varying), *(_cell(run["latest"].get(m)) for m in metrics),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    errors = [f"  run {r['run_id']}: {r['error'].strip().splitlines()[-1]}" for r in runs if r["error"]]
    notes = []
    if any((r.get("resume_from") or {}).get("how") == "run_fit" for r in runs):
        notes.append(":run_fit = interrupted; run_fit again with the same arguments continues it there")
    if any((r.get("resume_from") or {}).get("how") == "resume_run" for r in runs):
        notes.append(":resume_run = stopped by a command; `rapidfire resume` and a fit continue it there")
    return "\n".join(out + (["errors:", *errors] if errors else []) + notes)


_DONE = {
    "stop": "run {run} stopped",
    "resume": "run {run} resumed",
    "delete": "run {run} deleted",
    "clone": "run {run} cloned: new run {new}",
}


def _cmd_steer(args) -> int:
    with _open_experiment(args) as (path, runs, commands):
        return _steer(args, path.name, runs, commands)


def _steer(args, name: str, runs, commands) -> int:
    from rapidfire_core.control import CommandError

    try:
        runs.get_run(args.run_id)
    except KeyError:
        known = [r["run_id"] for r in runs.runs()]
        raise CliError(f"experiment {name} has no run {args.run_id} (its runs: {known or 'none'})") from None
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, got {args.timeout:g}")
    payload = {}
    if args.command == "clone":
        payload = {"changes": parse_assignments(args.changes), "warm_start": args.warm_start}
    try:
        command = commands.submit(args.command, args.run_id, payload, source="cli")
    except CommandError as exc:
        raise CliError(str(exc)) from None
    label = f"command {command.command_id} ({args.command} run {args.run_id})"
    idle = (
        f"no process is training experiment {name} now; the command stays pending and is applied"
        " when one does"
    )
    alive = commands.controller_alive()
    if args.no_wait:
        print(f"{label} submitted" + ("" if alive else f"; {idle}"))
        return 0
    if not alive and not args.wait:
        print(f"{label} submitted; {idle}", file=sys.stderr)
        return EXIT_NOT_APPLIED
    print(f"{label} submitted; waiting for it to be applied ...", file=sys.stderr)
    done = _wait(commands, command.command_id, args.timeout, stop_if_idle=not args.wait)
    if done is None:
        print(f"{label} is still pending after {args.timeout:g} s; it stays queued", file=sys.stderr)
        return EXIT_NOT_APPLIED
    if done == "idle":
        print(f"{label}: {idle}", file=sys.stderr)
        return EXIT_NOT_APPLIED
    if done.status == "failed":
        print(f"{label} failed: {done.error}", file=sys.stderr)
        return EXIT_FAILED
    print(_DONE[args.command].format(run=args.run_id, new=done.new_run_id))
    return 0


def _wait(commands, command_id: int, timeout: float, stop_if_idle: bool, poll: float = 0.1):
    """The finished command; None on timeout; "idle" if the training process went away."""
    deadline = time.monotonic() + timeout
    next_liveness = time.monotonic() + 1.0
    while True:
        command = commands.get(command_id)
        if command.done:
            return command
        now = time.monotonic()
        if now >= deadline:
            return None
        if stop_if_idle and now >= next_liveness:
            if not commands.controller_alive():
                return "idle"
            next_liveness = now + 1.0
        time.sleep(poll)


def _cmd_dashboard(args) -> int:
    from rapidfire_core.dashboard.experiments import default_root
    from rapidfire_core.dashboard.server import serve
    from rapidfire_core.dashboard.token import token_path

    root = Path(args.experiments_path) if args.experiments_path else default_root()
    if args.token is not None and not args.token.strip():
        raise CliError("--token must not be empty")
    if not root.is_dir():
        print(f"note: {root} does not exist yet; experiments appear once one is made there", file=sys.stderr)

    def announce(url: str) -> None:
        print(f"RapidFire dashboard for the experiments under {root.resolve()}")
        print(f"  open {url}")
        if args.no_token:
            print("  no token (--no-token): every user of this machine can steer these runs")
        elif args.token is None:
            print(f"  the token is yours, kept in {token_path()} (readable by you only)")
        if args.allow_code_edits:
            print("  --allow-code-edits: clone edits from the page may load code as you")
        print("  Ctrl-C stops it", flush=True)

    try:
        serve(
            root,
            host=args.host,
            port=args.port,
            token=args.token,
            announce=announce,
            require_token=not args.no_token,
            allow_code_edits=args.allow_code_edits,
        )
    except (OSError, ValueError) as exc:  # a busy port, an untrusted token file, --no-token off loopback
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
