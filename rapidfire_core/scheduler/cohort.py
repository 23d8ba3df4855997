"""Fused cohorts: runs on one shared base model that train in one forward and backward.

Which runs fuse (`cohort_key`): LoRA runs of the same trainer type (SFT or DPO) on the same
base model object, whose settings a fused step reproduces exactly (`trainers.fused_step`).
Everything else is time-sliced, and so is what `execution="auto"` does not fuse on the device
(`auto_fuses`). Different ranks, alphas, dropouts, target modules, batch sizes, max lengths,
learning rates, schedules and gradient accumulation all fuse; each member computes with its own
model settings (`trainers.model_patches`) and draws its dropout masks and sampled tokens from its
own RNG stream (`lora.run_streams`).

A cohort is one turn-taker of the round loop. Its turn (`CohortTurn.run`) trains each member
that is due until it completes its next chunk, as a sliced turn would, but the members'
micro-steps are fused. Each member's thread runs its stock TRL loop and pauses at every point
where it hands work to the cohort (`trainers.fused_step.FusedSlot`); the cohort thread then

    1. runs every waiting model call in one forward (`trainers.fused_calls`)
       and every waiting DPO reference request in one no-grad forward, adapters off;
    2. resumes each of those members: TRL computes its loss from its slice and hands it back;
    3. runs ONE backward of all handed-back losses;
    4. resumes each member: it clips its own gradients and steps its own optimizer when its
       accumulation is complete, logs, evaluates at its chunk end, and reaches its next
       micro-batch (back to 1), a step boundary with commands waiting, or its chunk end.

Members run one at a time, in run-id order, so each keeps its own RNG streams and process
state (`trainers.process_state`) exactly as when time-sliced. Between its own turns a member's
gradients are parked (`GradientParking`), so a member's `zero_grad()` and its gradient-norm
clip over the shared model see its own gradients only, and a member with more accumulation
steps keeps its partial sum.

Commands (stop, resume, delete, clone) take effect at a member's next optimizer step as for a
sliced run: they are applied once every member still training in the turn stands at a step
boundary (a member in the middle of its accumulation first finishes its step), then the turn
goes on; a clone joins the cohort at the next step.

Splitting (`plan_cohorts`): members are grouped by `cohort_key`, then cut into cohorts whose
tokens per fused micro-step (sum over members of batch size x max length) stay within
`max_cohort_tokens` (default: no limit on CPU; on CUDA, a quarter of the device's free memory
divided by an activation estimate per token, `activation_bytes_per_token`).
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rapidfire_core.scheduler.openmp_pool import release_openmp_workers
from rapidfire_core.trainers.fused_calls import ModelCall, run_backward, run_generations, run_model_calls
from rapidfire_core.trainers.fused_step import ReferenceRequest


class MemberState(enum.Enum):
    READY = "ready"  # to be resumed
    CALL = "call"  # waits for its model call's output
    REFERENCE = "reference"  # waits for reference log-probs
    GENERATE = "generate"  # waits for its completions (GRPO)
    BACKWARD = "backward"  # waits for the fused backward
    COMMANDS = "commands"  # at a step boundary, commands waiting
    DONE = "done"  # chunk complete, finished, parked or gone for this turn


class Cohort:
    """Runs that train fused (a turn-taker of `scheduler.loop`)."""

    def __init__(self, key: Any, members: Sequence[Any]) -> None:
        self.key = key
        self.members = list(members)
        self.run_id = min(m.run_id for m in self.members)

    @property
    def chunks_done(self) -> int:
        return min(m.chunks_done for m in self.members)

    def __repr__(self) -> str:
        return f"Cohort({[m.run_id for m in self.members]})"


def member_parameters(run: Any) -> list[torch.nn.Parameter]:
    """The parameters a member trains: those of its optimizer (its own adapter's)."""
    optimizer = getattr(run.trainer, "optimizer", None)
    if optimizer is None:  # before train() builds it: the adapter's parameters
        return [p for n, p in run.model.named_parameters() if f".{run.adapter_name}." in n]
    return [p for group in optimizer.param_groups for p in group["params"]]


class GradientParking:
    """Each member's gradients, off the parameters while another member runs (module docstring)."""

    def __init__(self) -> None:
        self._parked: dict[int, list[torch.Tensor | None]] = {}

    def park(self, run: Any) -> None:
        params = member_parameters(run)
        self._parked[run.run_id] = [p.grad for p in params]
        for p in params:
            p.grad = None

    def restore(self, run: Any) -> None:
        grads = self._parked.pop(run.run_id, None)
        if grads is None:
            return
        for p, g in zip(member_parameters(run), grads, strict=True):
            p.grad = g


def _sequence_key(ids: torch.Tensor, attention: torch.Tensor, completion: torch.Tensor) -> bytes:
    keep = attention.bool()
    return ids[keep].cpu().numpy().tobytes() + b"|" + completion[keep].bool().cpu().numpy().tobytes()


def _train_adapters(runs: Sequence[Any]) -> None:
    """requires_grad on every parameter the members train (PEFT's `set_adapter`, called when each
    member takes its turn, leaves it on for that member's adapter only)."""
    for run in runs:
        for p in member_parameters(run):
            p.requires_grad_(True)


class ReferenceCache:
    """DPO reference log-probs per distinct sequence (tokens and completion mask), adapters off.

    All DPO members of a cohort see the same examples in a chunk; each sequence's reference
    log-prob is computed once per cohort turn (a chunk) and shared, instead of once per run
    per step."""

    def __init__(self) -> None:
        self._logps: dict[bytes, torch.Tensor] = {}
        self.computed = 0  # sequences computed (the rest were shared)
        self.served = 0

    def fill(self, model: Any, requests: Sequence[ReferenceRequest]) -> None:
        todo: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        keys_of = []
        for req in requests:
            keys = []
            for row in range(req.input_ids.shape[0]):
                key = _sequence_key(req.input_ids[row], req.attention_mask[row], req.completion_mask[row])
                keys.append(key)
                if key not in self._logps and key not in todo:
                    keep = req.attention_mask[row].bool()
                    todo[key] = (req.input_ids[row][keep], req.completion_mask[row][keep])
            keys_of.append(keys)
        if todo:
            self._compute(model, todo)
        for req, keys in zip(requests, keys_of, strict=True):
            req.logps = torch.stack([self._logps[k] for k in keys])
            self.served += len(keys)

    def _compute(self, model: Any, todo: dict[bytes, tuple[torch.Tensor, torch.Tensor]]) -> None:
        length = max(ids.shape[0] for ids, _ in todo.values())
        rows = len(todo)
        first_ids = next(iter(todo.values()))[0]
        input_ids = first_ids.new_zeros((rows, length))
        attention = first_ids.new_zeros((rows, length))
        labels = first_ids.new_full((rows, length), -100)
        for i, (ids, completion) in enumerate(todo.values()):
            n = ids.shape[0]
            input_ids[i, :n] = ids
            attention[i, :n] = 1
            labels[i, :n] = ids.masked_fill(completion == 0, -100)
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "use_cache": False,
            "fused_lm_head": True,
        }
        call = ModelCall(None, kwargs, grad=False)
        run_model_calls(model, [call])
        if call.error is not None:
            raise call.error
        sums = call.output.log_probs.sum(dim=1)  # TRL: ref_per_token_logps.sum(dim=1)
        for key, value in zip(todo, sums, strict=True):
            self._logps[key] = value
        self.computed += rows


class ComputeThread:
    """One long-lived thread that runs the cohorts' fused forwards and backwards.

    Not the controller's thread: that is the process's main thread when `run_fit` runs in the
    foreground, and there torch's OpenMP team ran the same work 2.5-13x slower on the shared
    2-core dev machine than in any other thread (spin-waiting teams; with OMP_WAIT_POLICY=PASSIVE
    the difference vanishes). The runs' own work already runs in their threads."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._done = threading.Semaphore(0)
        self._intra_op_threads = torch.get_num_threads()  # the caller's setting (per OS thread)
        self._thread = threading.Thread(target=self._main, name="rapidfire-cohort", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        torch.set_num_threads(self._intra_op_threads)
        while (job := self._jobs.get()) is not None:
            fn, args, outcome = job
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome.append((False, exc))
            self._done.release()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the compute thread; its result, or its exception raised here.
        One job at a time (the controller waits for each)."""
        outcome: list = []
        release_openmp_workers()  # the caller's OpenMP team would slow the compute thread's
        self._jobs.put((fn, args, outcome))
        self._done.acquire()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)


class CohortTurn:
    """One turn of a cohort (module docstring). The controller supplies what a turn needs."""

    def __init__(
        self,
        members: Sequence[Any],
        *,
        advance: Callable[[Any], MemberState],
        apply_commands: Callable[[], None],
        wants_turn: Callable[[Any], bool],
        joiners: Callable[[], list[Any]],
        fail: Callable[[Any, BaseException], None],
        compute: Callable[..., Any],
    ) -> None:
        self.state = {m: MemberState.READY for m in members}
        self.advance = advance
        self.apply_commands = apply_commands
        self.wants_turn = wants_turn
        self.joiners = joiners
        self.fail = fail
        self.compute = compute  # runs the fused forwards/backwards (`ComputeThread.run`)
        self.parking = GradientParking()
        self.references = ReferenceCache()
        self.fused_steps = 0  # forwards that fused 2+ members' calls
        self.batched_generations = 0  # generates that batched 2+ members' prompts

    def _in(self, state: MemberState) -> list[Any]:
        return sorted((m for m, s in self.state.items() if s is state), key=lambda m: m.run_id)

    def _resume(self, runs: Sequence[Any]) -> None:
        for run in runs:
            if self.state.get(run) is MemberState.DONE:
                continue
            self.parking.restore(run)
            state = self.advance(run)
            if run.trainer is not None:  # still held: mid-accumulation gradients wait parked
                self.parking.park(run)
            self.state[run] = state

    def run(self) -> None:
        while True:
            self._resume(self._in(MemberState.READY))
            if backward := self._in(MemberState.BACKWARD):
                self._backward(backward)
            elif calls := self._in(MemberState.CALL):
                self._forward(calls)
            elif refs := self._in(MemberState.REFERENCE):
                self._reference(refs)
            elif generating := self._in(MemberState.GENERATE):
                requests = [run.slot.generation for run in generating]
                self.batched_generations += self.compute(run_generations, self._model(generating), requests)
                self._resume_all(generating, MemberState.READY)
            elif at_boundary := self._in(MemberState.COMMANDS):
                self.apply_commands()
                for run in at_boundary:
                    self.state[run] = MemberState.READY if self.wants_turn(run) else MemberState.DONE
                for run in self.joiners():
                    self.state.setdefault(run, MemberState.READY)
            else:
                return

    def _model(self, runs: Sequence[Any]) -> Any:
        return runs[0].model

    def _forward(self, runs: list[Any]) -> None:
        calls: list[ModelCall] = [run.slot.call for run in runs]
        _train_adapters([run for run, call in zip(runs, calls, strict=True) if call.grad])
        self.fused_steps += self.compute(run_model_calls, self._model(runs), calls)
        self._resume_all(runs, MemberState.READY)

    def _reference(self, runs: list[Any]) -> None:
        # Reference log-probs (adapters off) through a DPO member's forward wrapper, as its stock
        # trainer's reference pass; the members' wrappers differ only in extra outputs.
        runs[0].model_settings.apply()
        try:
            self.compute(self.references.fill, self._model(runs), [run.slot.reference for run in runs])
        except Exception as exc:  # noqa: BLE001 - these runs fail; the others go on
            for run in runs:
                self._fail_member(run, exc)
            return
        self._resume_all(runs, MemberState.READY)

    def _backward(self, runs: list[Any]) -> None:
        losses = [run.slot.loss for run in runs]
        for run in runs:
            self.parking.restore(run)  # accumulate onto the member's partial sum
        # Recomputed checkpointed layers must save what the forward saved: as in the forward, every
        # member's adapter requires grad (each member's own turn re-selects only its adapter).
        _train_adapters(runs)
        try:
            self.compute(run_backward, self._model(runs), losses, [run.slot.loss_batch for run in runs])
        except Exception as exc:  # noqa: BLE001 - these runs fail; the others go on
            for run in runs:
                self.parking.park(run)
                self._fail_member(run, exc)
            return
        for run in runs:
            self.parking.park(run)
        self._resume_all(runs, MemberState.READY)

    def _resume_all(self, runs: list[Any], state: MemberState) -> None:
        for run in runs:
            self.state[run] = state

    def _fail_member(self, run: Any, exc: BaseException) -> None:
        self.state[run] = MemberState.DONE
        self.fail(run, exc)


def member_tokens(run: Any) -> int:
    """Tokens one fused micro-step holds for ``run``: batch size x max length (x2 for DPO's
    chosen and rejected sequences)."""
    args = run.trainer.args
    length = getattr(args, "max_length", None) or 1024
    sequences = 2 if run.spec.trainer_type == "DPO" else 1
    return int(args.per_device_train_batch_size) * int(length) * sequences


def activation_bytes_per_token(config: Any) -> int:
    """A training-activation estimate per token for a decoder without recompute: ~34 bytes per
    hidden unit per layer at 16 bits (Korthikanti et al. 2022), doubled for fp32, plus the
    fp32 logits row of the LM head."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return 68 * hidden * layers + 4 * vocab


def cohort_token_budget(model: Any) -> int | None:
    """Tokens a cohort's fused micro-step may hold on ``model``'s device (None: no limit).

    On CUDA: a quarter of the free device memory over `activation_bytes_per_token` (the rest
    stays for the base weights' workspace, optimizer states and the allocator's slack). On CPU
    there is no limit: the host memory of a CPU run is not what limits a sweep."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(param.device)
    per_token = activation_bytes_per_token(getattr(model, "config", None))
    return max(1, free // 4 // max(per_token, 1))


def plan_cohorts(runs: Sequence[Any]) -> list[Any]:
    """Runs as turn-takers: runs with the same `cohort_key` become cohorts, cut (in run-id
    order) so that a cohort's `member_tokens` stay within `cohort_token_budget`; a cohort of
    one run is that run, time-sliced (there is nothing to fuse it with)."""
    takers: list[Any] = []
    groups: dict[Any, list[Any]] = {}
    for run in runs:
        if run.cohort_key is None:
            takers.append(run)
        else:
            groups.setdefault(run.cohort_key, []).append(run)
    for key, members in groups.items():
        budget = cohort_token_budget(members[0].model)
        current: list[Any] = []
        used = 0
        for run in members:
            tokens = member_tokens(run)
            if current and budget is not None and used + tokens > budget:
                takers.append(Cohort(key, current) if len(current) > 1 else current[0])
                current, used = [], 0
            current.append(run)
            used += tokens
        takers.append(Cohort(key, current) if len(current) > 1 else current[0])
    return sorted(takers, key=lambda taker: taker.run_id)


EXECUTIONS = ("auto", "fused", "sliced")


def auto_fuses(trainer_type: str, device: torch.device) -> bool:
    """What ``execution="auto"`` picks for a fusable run on ``device``: fuse or time-slice.

    On CUDA every fusable run fuses: one read of the base weights and one kernel launch per layer
    for N runs is where fusion pays. On a CPU a fused SFT/DPO step does the same arithmetic as the
    runs' own steps on N-times larger activations, and measured slower: 0.81x time-sliced on
    SmolLM2-135M (benchmarks/RESULTS.md, "SmolLM2-135M"): those train time-sliced. GRPO fuses on
    every device: its cohort batches only the runs' generations (its training steps stay each
    run's own), one read of the weights per token for all runs; measured on a CPU it was never
    slower than the runs one after another (4 configs: 1.82x on the tiny model, 1.07x on
    SmolLM2-135M, where 16 rows per run already make decoding compute-bound; benchmarks/RESULTS.md,
    "Issue 18")."""
    return device.type == "cuda" or trainer_type == "GRPO"
