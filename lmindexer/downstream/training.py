"""Fine-tuning a generative model on the platform's one training loop (:mod:`lmindexer.training.loop`).

The same code trains on a CPU, one GPU or several processes under ``accelerate launch`` (each process takes every
n-th batch; gradients are averaged across them), and resumes mid-run: with a ``checkpoint_dir`` the trained weights,
the optimiser state, the step and the losses so far are written every ``checkpoint_every`` steps (safetensors +
JSON), and a rerun on the same options and examples continues from there. A checkpoint made from other options or
other examples is ignored, with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.training.checkpoint import find_checkpoint, save_checkpoint
from lmindexer.training.loop import (
    TrainingLoop,
    epoch_batches,
    pad_token_rows,
    process_share,
    training_fingerprint,
)

if TYPE_CHECKING:
    from lmindexer.downstream.generative import GenerativeConfig
    from lmindexer.downstream.model import GenerativeIdModel

log = logging.getLogger(__name__)
# Gradients are clipped to this norm: the ID token vectors start far from the backbone's scale.
MAX_GRAD_NORM = 1.0


class TokenizedTexts:
    """Every text's token ids (truncated, unpadded) and, with a frozen encoder, its cached encoder states."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> None:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.ids = [torch.tensor(row, dtype=torch.long) for row in encoded["input_ids"]]
        self.pad_id = tokenizer.pad_token_id or 0
        self.memory: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_token_rows([self.ids[i] for i in index], self.pad_id)
        length = input_ids.size(1)
        batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if self.memory is not None:
            states = [self.memory[i] for i in index]
            memory = torch.zeros((len(states), length, states[0].size(-1)), dtype=states[0].dtype)
            for n, state in enumerate(states):
                memory[n, : len(state)] = state
            batch["memory"] = memory.to(device)
        return batch

    @torch.inference_mode()
    def cache_memory(self, encode: Any, batch_size: int, device: torch.device, progress: bool) -> None:
        """Run the frozen encoder once over every text; training then reads its states from memory (float16)."""
        memory: list[torch.Tensor | None] = [None] * len(self.ids)
        # Texts of similar length batched together: little padding.
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for index in tqdm(batches, desc="encoding texts", unit="batch", disable=not progress, leave=False):
            batch = self.batch(index, device)
            states = encode(batch["input_ids"], batch["attention_mask"]).to(torch.float16).cpu()
            for n, i in enumerate(index):
                memory[i] = states[n, : len(self.ids[i])].clone()
        self.memory = memory  # type: ignore[assignment]


def optimizer_for(network: GenerativeIdModel, config: GenerativeConfig, trains_encoder: bool) -> torch.optim.AdamW:
    """AdamW over the head (and the encoder layers that train, at their own rate); each group carries its peak rate."""
    encoder = {id(p) for p in network.backbone.encoder_parameters()}
    head = [p for p in network.parameters() if id(p) not in encoder and p.requires_grad]
    groups = [{"params": head, "lr": config.learning_rate, "peak": config.learning_rate}]
    if trains_encoder:
        rate = config.encoder_learning_rate
        trained = [p for p in network.backbone.encoder_parameters() if p.requires_grad]
        groups.append({"params": trained, "lr": rate, "peak": rate})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def train_network(
    network: GenerativeIdModel,
    config: GenerativeConfig,
    accelerator: Any,
    examples: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    *,
    trains_encoder: bool,
    described_examples: Iterable[str],
    checkpoint_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``config.epochs`` epochs over ``examples`` (shuffled batches of indices handed to ``batch_loss``).

    ``described_examples`` (one string per example, with its target) and the options make the fingerprint a
    checkpoint must carry to be resumed.
    """
    started = time.perf_counter()
    rank, world = accelerator.process_index, accelerator.num_processes
    batches = process_share(epoch_batches(examples, config.batch_size, config.epochs, config.seed), rank, world)
    optimizer = accelerator.prepare(optimizer_for(network, config, trains_encoder))
    loop = TrainingLoop(accelerator, optimizer, network, len(batches), config.warmup_share, config.seed,
                        decay="linear", max_grad_norm=MAX_GRAD_NORM, checkpoint_every=config.checkpoint_every,
                        progress=progress and accelerator.is_main_process)  # fmt: skip
    fingerprint = training_fingerprint(config.model_dump(mode="json"), described_examples)
    trained = [name for name, p in network.named_parameters() if p.requires_grad]

    def save(step: int, losses: list[dict[str, float]]) -> None:
        if checkpoint_dir is None:
            return
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            weights = dict(network.named_parameters())
            save_checkpoint(checkpoint_dir, progress={"fingerprint": fingerprint, "step": step, "losses": losses},
                            model={name: weights[name] for name in trained},
                            optimizer=getattr(optimizer, "optimizer", optimizer), arrays={})  # fmt: skip
        accelerator.wait_for_everyone()

    start_step, losses = _resume(checkpoint_dir, fingerprint, network, trained, optimizer)
    losses = loop.run(batches, batch_loss, start_step=start_step, checkpoint=save, losses=losses)
    network.eval()
    # This process's steps in as many consecutive groups as there are epochs (one group per epoch with one process).
    per_epoch = np.array_split(np.asarray([row["loss"] for row in losses]), min(config.epochs, max(len(losses), 1)))
    return {
        "epochs": config.epochs,
        "steps": len(batches),
        "epoch_loss": [float(chunk.mean()) for chunk in per_epoch if len(chunk)],
        "train_s": time.perf_counter() - started,
        "processes": world,
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        "resumed_at_step": start_step or None,
    }  # fmt: skip


def _resume(
    checkpoint_dir: Path | None,
    fingerprint: str,
    network: GenerativeIdModel,
    trained: Sequence[str],
    optimizer: Any,
) -> tuple[int, list[dict[str, float]]]:
    """The step to start from and the losses so far: from the checkpoint when it fits this training, else 0."""
    checkpoint = find_checkpoint(checkpoint_dir)
    if checkpoint is None:
        return 0, []
    if checkpoint.progress.get("fingerprint") != fingerprint:
        log.warning("ignoring the checkpoint in %s: other options or other examples", checkpoint.directory)
        return 0, []
    if set(checkpoint.model) != set(trained):
        log.warning("ignoring the checkpoint in %s: it does not fit this model", checkpoint.directory)
        return 0, []
    weights = dict(network.named_parameters())
    with torch.no_grad():
        for name in trained:
            weights[name].copy_(checkpoint.model[name].to(weights[name].device))
    checkpoint.restore_optimizer(getattr(optimizer, "optimizer", optimizer))
    step = int(checkpoint.progress["step"])
    log.info("resumed from the checkpoint in %s at step %d", checkpoint.directory, step)
    return step, [dict(row) for row in checkpoint.progress.get("losses", [])]
