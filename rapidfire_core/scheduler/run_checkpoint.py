"""What a run's chunk checkpoint holds, and how a rebuilt run continues from one.

Captured at an optimizer-step boundary of a paused run (a chunk end, or a stop):

    adapter.safetensors  run.adapter_state()          (the seam: PEFT adapter or multi-LoRA slot)
    optimizer.pt         run.trainer.optimizer.state_dict()
    scheduler.pt         run.trainer.lr_scheduler.state_dict()
    rng.pt               run.process_state's RNG streams: python, numpy, torch CPU, CUDA
    trainer_state.json   run.trainer.state (global step, epoch, log history, flos, ...)
    engine.json          sampler start, chunks_done, the chunk gate's (epoch, micro-batches),
                         the trainer's loss accumulators, its counters and metric
                         accumulators (`TRAINER_COUNTERS`), the run's latest metrics

Continuing (`RunResume`). The run is rebuilt from its config as on its first start (trainer,
adapter, sampler from the same start position), its adapter weights are loaded through
`run.load_adapter_state`, and its trainer's `train()` is called with
`resume_from_checkpoint=<the folder>`: transformers then loads `trainer_state.json` (global
step, epoch), skips the batches of the current epoch already trained (our sampler is
deterministic given the epoch, so `skip_first_batches` lands on the exact next batch), and
calls the trainer's load hooks, which the engine's trainers route here (`trainers.factory`):
optimizer and scheduler states are loaded into the objects it made, model weights are not
loaded by transformers (the engine did, through the seam). The RNG streams, and the loss
accumulators transformers resets after loading (`_tr_loss`, `_total_loss_scalar`,
`_globalstep_last_logged`), are put back at the first optimizer-step boundary, the point where
they were captured: every draw after it (dropout, DataLoader seeds) is the uninterrupted run's.

Every piece of trainer state that feeds a logged value is in the checkpoint, so a continued
run logs what the uninterrupted one logs, not only the same losses. Audit of TRL 1.16 and
transformers 5.25 (attributes a trainer changes while it trains; `TRAINER_COUNTERS`):

    trainer_state.json  global_step, epoch, total_flos, num_input_tokens_seen (GRPO's
                        `num_tokens`, and transformers' own with include_num_input_tokens_seen),
                        log_history, best metric, stateful callbacks: loaded by transformers
    _tr_loss, _total_loss_scalar, _globalstep_last_logged   `loss`, and `train_loss` at the end
    _initial_global_step the step train() started at: `train_loss` is the loss summed since
                        then over the steps since then; a resumed train() sets it to the
                        checkpoint's step, the uninterrupted run has 0
    current_flos        FLOPs of the steps since the last log, not yet in total_flos
    _total_train_tokens SFT's and DPO's `num_tokens` (a running sum since the trainer was made)
    _metrics            SFT/DPO/GRPO per-step values averaged at the next log (entropy,
                        mean_token_accuracy, rewards/*, logps/*, kl, completions/*, ...):
                        not empty at a chunk end that is not a logging step (logging_steps > 1)
    _pending_metrics    GRPO: values of `log_metric` not yet folded into `_metrics`
    _step               GRPO: micro-steps taken; picks when to generate and which buffered
                        generation batch a micro-step trains on

Not kept: wall-clock values (`train_runtime`, `*_per_second`, GRPO's `step_time`, which are
never equal across two runs anyway) and GRPO's `_logs` (the prompt/completion text table it
prints with log_completions, not a metric).

DPO: the reference model is the base model with the run's adapter disabled, recomputed from
the shared base, so nothing beyond the above is needed (with `precompute_ref_log_probs` the
trainer recomputes them deterministically when it is rebuilt). GRPO checkpoints at chunk ends,
which are generation-batch boundaries; its generation buffer is empty there.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rapidfire_core.control.checkpoints import CheckpointInfo, CheckpointStore

ENGINE_FORMAT = 1
# Trainer attributes that feed logged values (module docstring): JSON numbers, or
# {mode: {metric: [numbers]}} dicts of lists. Absent on a trainer: not captured, not restored.
TRAINER_COUNTERS = (
    "_initial_global_step",
    "current_flos",
    "_total_train_tokens",
    "_metrics",
    "_pending_metrics",
    "_step",
)


def _host_copy(value: Any) -> Any:
    """A deep copy of a state dict with every tensor cloned to the host (later steps do not change it)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


def _rng_state(process_state: Any) -> dict[str, Any]:
    """The RNG streams of a captured ProcessState in a form torch.load(weights_only=True) reads."""
    version, state, gauss = process_state.python_rng
    kind, keys, pos, has_gauss, cached = process_state.numpy_rng
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), int(pos), int(has_gauss), float(cached)],
        "torch_cpu": process_state.torch_cpu_rng.clone(),
        "torch_cuda": [t.clone() for t in process_state.torch_cuda_rng]
        if process_state.torch_cuda_rng
        else None,
    }


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch_cpu"])
    if rng["torch_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])


@dataclass
class RunCheckpoint:
    """A run's state captured on the host (cheap to take; written by `write`)."""

    global_step: int
    chunks_done: int
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    trainer_state: str  # TrainerState as JSON
    engine: dict[str, Any]

    def files(self) -> dict[str, Any]:
        from safetensors.torch import save_file

        def adapter(path: Path) -> None:
            save_file({k: v.contiguous() for k, v in self.adapter.items()}, str(path))

        def saved(obj: Any):
            return lambda path: torch.save(obj, path)

        out: dict[str, Any] = {"adapter.safetensors": adapter}
        if self.optimizer is not None:
            out["optimizer.pt"] = saved(self.optimizer)
        if self.scheduler is not None:
            out["scheduler.pt"] = saved(self.scheduler)
        out["rng.pt"] = saved(self.rng)
        out["trainer_state.json"] = lambda path: path.write_text(self.trainer_state)
        out["engine.json"] = lambda path: path.write_text(json.dumps(self.engine, sort_keys=True))
        return out

    def write(self, store: CheckpointStore) -> Path:
        meta = {"sampler_start": self.engine["sampler_start"], "current_chunk": self.engine["current_chunk"]}
        return store.write(self.global_step, self.chunks_done, self.files(), meta)


def capture(run: Any) -> RunCheckpoint:
    """The state of a paused run (module docstring). Host copies: safe to write from another thread."""
    trainer = run.trainer
    state = trainer.state
    _export_callback_states(trainer)
    optimizer = getattr(trainer, "optimizer", None)
    scheduler = getattr(trainer, "lr_scheduler", None)
    tr_loss = getattr(trainer, "_tr_loss", None)
    engine = {
        "format": ENGINE_FORMAT,
        "global_step": int(state.global_step),
        "chunks_done": int(run.chunks_done),
        "current_chunk": int(run.current_chunk),
        "sampler_start": int(run.sampler.start),
        "gate_epoch": int(run.gate.epoch),
        "gate_micro_batches": int(run.gate.micro_batches),
        "tr_loss": float(tr_loss.item()) if torch.is_tensor(tr_loss) else 0.0,
        "total_loss_scalar": float(getattr(trainer, "_total_loss_scalar", 0.0)),
        "globalstep_last_logged": int(getattr(trainer, "_globalstep_last_logged", state.global_step)),
        "latest": dict(run.latest),
        "counters": trainer_counters(trainer),
    }
    return RunCheckpoint(
        global_step=int(state.global_step),
        chunks_done=int(run.chunks_done),
        adapter=_host_copy(run.adapter_state()),
        optimizer=_host_copy(optimizer.state_dict()) if optimizer is not None else None,
        scheduler=_host_copy(scheduler.state_dict()) if scheduler is not None else None,
        rng=_rng_state(run.process_state),
        trainer_state=_state_json(state),
        engine=engine,
    )


def _plain(value: Any) -> Any:
    """`value` as JSON: tensors and numpy scalars as numbers, mappings (defaultdicts) as dicts."""
    if torch.is_tensor(value) or isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def trainer_counters(trainer: Any) -> dict[str, Any]:
    """The trainer's `TRAINER_COUNTERS` it has, as JSON values (copies)."""
    return {name: _plain(getattr(trainer, name)) for name in TRAINER_COUNTERS if hasattr(trainer, name)}


def restore_trainer_counters(trainer: Any, counters: dict[str, Any]) -> None:
    """Put captured counters back; dicts are refilled in place (`_metrics` holds defaultdicts
    the trainer made, which its code appends to)."""
    for name, value in counters.items():
        current = getattr(trainer, name, None)
        if isinstance(value, dict) and isinstance(current, dict):
            _refill(current, value)
        else:
            setattr(trainer, name, value)


def _refill(target: dict, saved: dict) -> None:
    for key in [k for k in target if k not in saved]:
        del target[key]
    for key, value in saved.items():
        inner = target.get(key)
        if isinstance(value, dict) and isinstance(inner, dict):
            _refill(inner, value)  # keeps the trainer's own (default)dict objects
        else:
            target[key] = list(value) if isinstance(value, list) else value


def _export_callback_states(trainer: Any) -> None:
    """As transformers does before it saves a checkpoint: stateful callbacks record their state."""
    from transformers.trainer_callback import ExportableState

    for cb in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(cb, ExportableState):
            trainer.state.stateful_callbacks[cb.__class__.__name__] = cb.state()


def _state_json(state: Any) -> str:
    import dataclasses

    return json.dumps(dataclasses.asdict(state), indent=1, sort_keys=True)


class RunResume:
    """A checkpoint read back for a rebuilt run (module docstring)."""

    def __init__(self, info: CheckpointInfo) -> None:
        from safetensors.torch import load_file

        self.path = info.path
        self.global_step = info.global_step
        self.chunks_done = info.chunks_done
        self.engine = json.loads((info.path / "engine.json").read_text())
        self.adapter = load_file(str(info.path / "adapter.safetensors"))
        self.rng = torch.load(info.path / "rng.pt", weights_only=True)

    def load_optimizer_and_scheduler(self, trainer: Any) -> None:
        """Called by the trainer's `_load_optimizer_and_scheduler` hook inside `train()`."""
        optimizer_file, scheduler_file = self.path / "optimizer.pt", self.path / "scheduler.pt"
        if optimizer_file.is_file() and trainer.optimizer is not None:
            trainer.optimizer.load_state_dict(torch.load(optimizer_file, weights_only=True))
        if scheduler_file.is_file() and trainer.lr_scheduler is not None:
            trainer.lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))

    def at_first_step(self, trainer: Any) -> None:
        """At the resumed run's first optimizer-step boundary: what transformers reset after loading."""
        restore_rng(self.rng)
        if torch.is_tensor(getattr(trainer, "_tr_loss", None)):
            trainer._tr_loss.fill_(self.engine["tr_loss"])
        trainer._total_loss_scalar = self.engine["total_loss_scalar"]
        trainer._globalstep_last_logged = self.engine["globalstep_last_logged"]
        restore_trainer_counters(trainer, self.engine.get("counters", {}))


__all__ = [
    "TRAINER_COUNTERS",
    "RunCheckpoint",
    "RunResume",
    "capture",
    "restore_rng",
    "restore_trainer_counters",
    "trainer_counters",
]
