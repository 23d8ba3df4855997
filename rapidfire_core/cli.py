"""The ``rapidfire`` command.

    rapidfire demo [--model M] [--dataset D] [--experiment-path P] [--num-chunks N] [--max-steps S]
    rapidfire info

Heavy imports (torch, transformers, TRL) happen inside the subcommands, so
``rapidfire --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


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

    sub.add_parser(
        "info",
        help="print build info of the native module, library versions and whether a GPU is usable",
        description=(
            "Print rapidfire_core's native build info, torch/trl/transformers/peft versions and GPU status."
        ),
    )
    return parser


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
    return info


def _print_info(info: dict) -> None:
    native = info.get("native", {})
    print(f"rapidfire_core {info['rapidfire_core']}")
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
        )
        failed = board["status"].astype(str).str.upper().eq("FAILED").sum() if not board.empty else 0
        return 1 if board.empty or failed == len(board) else 0
    if args.command == "info":
        _print_info(collect_info())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
