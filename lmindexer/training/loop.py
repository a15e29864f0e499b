"""The one training loop of the platform, on Accelerate: a CPU, one GPU or several processes with the same code.

A model's trainer decides what to train (its phases, its batches, its loss, what a checkpoint holds); this loop runs
the steps: the learning-rate schedule, a seed per step, autocast, backward, the gradients averaged across processes,
clipping, the optimiser step, progress, loss logging and a checkpoint every ``checkpoint_every`` steps.

Gradients are averaged across processes by hand rather than by wrapping the model in DistributedDataParallel: the
LMIndexer changes which parameters train from phase to phase (DDP fixes that set when it wraps), and the generative
model trains through methods other than ``forward`` (which DDP would not see). One all-reduce per step over the
trained parameters is what DDP would do.

Every step's randomness (dropout, token views) is seeded from ``(seed, step, process)`` alone, and every process's
batches are fixed before the loop starts, so a run resumed from a checkpoint continues the very same sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY = 20
LOSS_WINDOW = 10
# Keeps the seeds of two processes (and of two phases) from meeting for any realistic number of steps.
PROCESS_SEED_STRIDE = 1_000_003
Decay = Literal["cosine", "linear"]
LossFunction = Callable[[Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
CheckpointFunction = Callable[[int, list[dict[str, float]]], None]


def create_accelerator(mixed_precision: str | None, device: str) -> Any:
    """An Accelerator on the GPU when there is one and ``device`` allows it; ``mixed_precision`` None follows
    ``accelerate launch --mixed_precision`` (or no mixed precision outside it)."""
    from accelerate import Accelerator

    options: dict[str, Any] = {}
    if mixed_precision is not None:
        options["mixed_precision"] = mixed_precision
    if device == "cpu" or not torch.cuda.is_available():
        options["cpu"] = True
    return Accelerator(**options)


def schedule_factor(step: int, total_steps: int, warmup_share: float, decay: Decay = "cosine") -> float:
    """Share of the peak learning rate at ``step`` (0-based) of a run of ``total_steps``: linear warm-up over the
    first ``warmup_share`` of the steps, then a cosine or linear decay to zero."""
    total = max(total_steps, 1)
    warmup = max(1, int(total * warmup_share))
    if step < warmup:
        return (step + 1) / warmup
    if decay == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def training_fingerprint(options: Mapping[str, Any], parts: Iterable[str]) -> str:
    """What a checkpoint must have been made from to be resumed: the options and the training data, in order."""
    digest = hashlib.sha256(json.dumps(dict(options), sort_keys=True, default=str).encode())
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]


def epoch_batches(examples: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Every epoch's shuffled batches of example indices (the last one of an epoch may be short)."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    for _ in range(epochs):
        order = torch.randperm(examples, generator=generator).tolist()
        batches += [order[start : start + batch_size] for start in range(0, examples, batch_size)]
    return batches


def process_share(batches: Sequence[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's batches: every ``world``-th one from ``rank``. Every process gets the same number of steps
    (each step is one all-reduce that all must join), so the list is wrapped round to a multiple of ``world``."""
    if world == 1:
        return list(batches)
    steps = math.ceil(len(batches) / world)
    wrapped = [batches[i % len(batches)] for i in range(steps * world)]
    return wrapped[rank::world]


def pad_token_rows(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of unpadded token rows, right-padded to the longest."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for n, row in enumerate(rows):
        input_ids[n, : len(row)] = row
        mask[n, : len(row)] = 1
    return input_ids, mask


def summarise_losses(losses: Sequence[Mapping[str, float]], window: int = LOSS_WINDOW) -> dict[str, float]:
    """Each loss's mean over the first and the last ``window`` steps."""
    record: dict[str, float] = {}
    for key in losses[0] if losses else []:
        record[f"{key}_first"] = round(float(np.mean([row[key] for row in losses[:window]])), 4)
        record[f"{key}_last"] = round(float(np.mean([row[key] for row in losses[-window:]])), 4)
    return record


def average_gradients(accelerator: Any, parameters: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` across processes (one all-reduce; nothing with one process)."""
    if accelerator.num_processes == 1 or not parameters:
        return
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is None:  # every process must join the same collective with the same sizes
            parameter.grad = torch.zeros_like(parameter)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    dist.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for parameter in parameters:
        size = parameter.grad.numel()
        parameter.grad.copy_(flat[offset : offset + size].view_as(parameter.grad))
        offset += size


@dataclass
class TrainingLoop:
    """Runs the optimiser steps of one model's training; one instance spans all of that training's phases, so the
    schedule runs once across them. The optimiser's parameter groups carry their peak rate as ``"peak"``."""

    accelerator: Any
    optimizer: Any
    module: nn.Module
    total_steps: int
    warmup_share: float
    seed: int
    decay: Decay = "cosine"
    max_grad_norm: float | None = None
    checkpoint_every: int | None = None
    progress: bool = False

    def set_rate(self, global_step: int) -> None:
        factor = schedule_factor(global_step, self.total_steps, self.warmup_share, self.decay)
        for group in getattr(self.optimizer, "optimizer", self.optimizer).param_groups:
            group["lr"] = group["peak"] * factor

    def run(
        self,
        batches: Sequence[Any],
        loss: LossFunction,
        *,
        title: str = "training",
        start_step: int = 0,
        steps_before: int = 0,
        seed_offset: int = 0,
        checkpoint: CheckpointFunction | None = None,
        losses: list[dict[str, float]] | None = None,
    ) -> list[dict[str, float]]:
        """Steps ``start_step..len(batches)`` of a phase (``steps_before`` steps of the run precede it): one step
        per batch, ``loss(batch)`` giving the loss or a dict of losses with the one to minimise as ``"loss"``.
        Returns every step's losses (``losses``: those of the steps before ``start_step``, from a checkpoint)."""
        from accelerate.utils import set_seed

        accelerator = self.accelerator
        losses = list(losses or [])
        steps = len(batches)
        bar = tqdm(total=steps, initial=start_step, desc=title, unit="step", disable=not self.progress, leave=False)
        self.module.train()
        for step in range(start_step, steps):
            set_seed(self.seed + seed_offset + step + PROCESS_SEED_STRIDE * accelerator.process_index)
            self.set_rate(steps_before + step)
            with accelerator.autocast():
                out = loss(batches[step])
            out = {"loss": out} if isinstance(out, torch.Tensor) else dict(out)
            accelerator.backward(out["loss"])
            trained = [p for p in self.module.parameters() if p.requires_grad]
            average_gradients(accelerator, trained)
            if self.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trained, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            values = {k: float(v.detach()) for k, v in out.items()}
            losses.append(values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}")
            if (step + 1) % LOG_EVERY == 0:
                log.info("%s step %d/%d: %s", title, step + 1, steps,
                         ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())))  # fmt: skip
            every = self.checkpoint_every
            if checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
                checkpoint(step + 1, losses)
        bar.close()
        return losses
