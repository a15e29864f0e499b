"""Progressive, resumable training of the LMIndexer model on Accelerate (CPU, one GPU or many with the same code).

For each position t in turn:

1. *no-code stage*: the reconstructor reads the continuous decoder state ``h_t``;
2. codebook t is initialised by spherical k-means on ``h_t`` of every item (cosine: the similarity assignment uses);
3. *quantised stage*: the reconstructor reads the straight-through code vector;
4. every item is assigned its code t (teacher-forced on its codes before t), which the next positions build on.

A warm retrain starts from a snapshot's weights and codebooks, takes the codes that snapshot gives every item of the
grown catalogue as its starting assignment, and runs shorter quantised stages only.

Under DDP each process trains on its own slice of every step's batches; whole-catalogue passes (k-means, assignment)
run on every process and the main process's result is broadcast, so all processes agree exactly. The training
state is checkpointed every ``checkpoint_every`` steps and at each stage boundary; a rerun with the same options and
catalogue resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.indexers.kmeans import fit_kmeans
from lmindexer.indexers.lm.checkpoint import find_checkpoint, save_checkpoint
from lmindexer.indexers.lm.config import LMIndexerConfig
from lmindexer.indexers.lm.model import LMIndexerModel, tied_names

log = logging.getLogger(__name__)
LOG_EVERY = 20
LOSS_WINDOW = 10
SUMMARY_DOMINANCE = 2.0


@dataclass(frozen=True)
class Stage:
    level: int
    quantised: bool
    steps: int
    kmeans_init: bool

    @property
    def name(self) -> str:
        return f"position {self.level + 1} {'quantised' if self.quantised else 'no-code'}"


def plan_stages(config: LMIndexerConfig, *, warm: bool) -> list[Stage]:
    stages = []
    for level in range(config.levels):
        if warm:
            stages.append(Stage(level, True, config.stage_warm_steps, kmeans_init=False))
            continue
        if config.nocode_steps:
            stages.append(Stage(level, False, config.nocode_steps, kmeans_init=False))
        stages.append(Stage(level, True, config.quantised_steps, kmeans_init=True))
    return stages


def create_accelerator(config: LMIndexerConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Positions not being trained yet get no gradient, which DDP must be told about.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    options: dict[str, Any] = {"kwargs_handlers": handlers}
    if config.mixed_precision is not None:
        options["mixed_precision"] = config.mixed_precision
    if config.device == "cpu" or not torch.cuda.is_available():
        options["cpu"] = True
    return Accelerator(**options)


class TokenizedItems:
    """Every item's token ids (truncated, unpadded) and, with a frozen encoder, its cached encoder states."""

    def __init__(self, model: LMIndexerModel, texts: Sequence[str], max_length: int) -> None:
        encoded = model.backbone.tokenizer(list(texts), truncation=True, max_length=max_length)
        self.ids = [torch.tensor(row, dtype=torch.long) for row in encoded["input_ids"]]
        self.pad_id = model.backbone.tokenizer.pad_token_id or 0
        self.memory: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        rows = [self.ids[i] for i in index]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for n, row in enumerate(rows):
            input_ids[n, : len(row)] = row
            mask[n, : len(row)] = 1
        batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if self.memory is not None:
            states = [self.memory[i] for i in index]
            memory = torch.zeros((len(rows), length, states[0].size(-1)), dtype=states[0].dtype)
            for n, state in enumerate(states):
                memory[n, : len(state)] = state
            batch["memory"] = memory.to(device)
        return batch

    def by_length(self, batch_size: int) -> Iterator[list[int]]:
        """Index batches of similar length (little padding) covering every item once."""
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    @torch.inference_mode()
    def cache_memory(self, model: LMIndexerModel, batch_size: int, device: torch.device, progress: bool) -> None:
        """Run the frozen encoder once over every item; training then reads its states from memory (float16)."""
        memory: list[torch.Tensor | None] = [None] * len(self.ids)
        batches = list(self.by_length(batch_size))
        for index in tqdm(batches, desc="encoding catalogue", unit="batch", disable=not progress, leave=False):
            batch = self.batch(index, device)
            states = model.encode(batch["input_ids"], batch["attention_mask"]).to(torch.float16).cpu()
            for n, i in enumerate(index):
                memory[i] = states[n, : len(self.ids[i])].clone()
        self.memory = memory  # type: ignore[assignment]


def training_fingerprint(config: LMIndexerConfig, texts: Sequence[str], warm_version: str | None) -> str:
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(str(warm_version).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]


class Trainer:
    def __init__(
        self,
        model: LMIndexerModel,
        config: LMIndexerConfig,
        texts: Sequence[str],
        *,
        checkpoint_dir: Path | None,
        progress: bool,
        warm: bool = False,
        warm_version: str | None = None,
    ) -> None:
        from accelerate.utils import set_seed

        self.config = config
        self.accelerator = create_accelerator(config)
        self.is_main = self.accelerator.is_main_process
        self.progress = progress and self.is_main
        self.device = self.accelerator.device
        set_seed(config.seed)
        self.model = model.to(self.device)
        if not config.train_encoder:
            for parameter in self.model.backbone.encoder_parameters():
                parameter.requires_grad_(False)
        self.items = TokenizedItems(model, texts, config.max_length)
        self.warm = warm
        self.codes = torch.full((len(texts), config.levels), -1, dtype=torch.long)
        self.warm_codes: torch.Tensor | None = None
        self.stages = plan_stages(config, warm=self.warm)
        self.fingerprint = training_fingerprint(config, texts, warm_version)
        self.checkpoint_dir = checkpoint_dir
        self.history: list[dict[str, Any]] = []
        self.wrapped = self.accelerator.prepare(self.model)

    # -- whole-catalogue passes ----------------------------------------------------------------------------------

    def _memory(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "memory" in batch:
            return batch["memory"].float()
        return self.model.encode(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def hidden_states(self, level: int) -> torch.Tensor:
        """``h_level`` of every item, teacher-forced on its assigned codes before ``level`` (float32, CPU)."""
        self.model.eval()
        out = torch.empty((len(self.items), self.model.backbone.hidden_size))
        for index in self.items.by_length(self.config.inference_batch_size):
            batch = self.items.batch(index, self.device)
            prefix = self.codes[index, :level].to(self.device)
            out[index] = self.model.hidden(self._memory(batch), batch["attention_mask"], prefix)[:, level].float().cpu()
        return out

    @torch.no_grad()
    def greedy_codes(self, levels: int | None = None) -> torch.Tensor:
        """Every item's codes for the first ``levels`` positions, decoded as the snapshot would (main's result)."""
        levels = self.config.levels if levels is None else levels
        self.model.eval()
        out = torch.empty((len(self.items), levels), dtype=torch.long)
        for index in self.items.by_length(self.config.inference_batch_size):
            batch = self.items.batch(index, self.device)
            out[index] = self.model.greedy_codes(self._memory(batch), batch["attention_mask"], levels).cpu()
        return self._broadcast(out)

    @torch.no_grad()
    def calibrate_summary(self) -> float:
        """Scale the summary added to the decoder's states so that, across the catalogue, it varies
        ``SUMMARY_DOMINANCE`` times as much as the untrained decoder's own position-1 state."""
        self.model.eval()
        decoder, summary = [], []
        for index in self.items.by_length(self.config.inference_batch_size):
            batch = self.items.batch(index, self.device)
            memory, mask = self._memory(batch), batch["attention_mask"]
            empty = torch.zeros((len(index), 0), dtype=torch.long, device=self.device)
            decoder.append(self.model.decoder_states(memory, mask, empty)[:, 0].float().cpu())
            summary.append(self.model.summary(memory, mask).float().cpu())

        def spread(rows: list[torch.Tensor]) -> float:
            values = torch.cat(rows)
            return float((values - values.mean(dim=0)).norm(dim=1).mean())

        scale = SUMMARY_DOMINANCE * spread(decoder) / max(spread(summary), 1e-6)
        scale = float(self._broadcast(torch.tensor(scale)))
        with torch.no_grad():
            self.model.summary_scale.fill_(scale)
        return scale

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        from accelerate.utils import broadcast

        if self.accelerator.num_processes == 1:
            return tensor
        return broadcast(tensor.to(self.device), from_process=0).cpu()

    def _parents(self, level: int) -> torch.Tensor:
        return LMIndexerModel.parents(self.codes, level)

    def centre(self, level: int) -> torch.Tensor:
        """Set the centres of code space ``level`` from the catalogue (see ``LMIndexerModel``); returns the states."""
        states = self.hidden_states(level)
        parents = self._parents(level)
        table = self.model.centres(level)
        sums = torch.zeros(table.shape, dtype=torch.float64).index_add_(0, parents, states.double())
        counts = torch.bincount(parents, minlength=table.size(0)).double().unsqueeze(1)
        # a parent code no item holds falls back to the catalogue mean
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), states.double().mean(dim=0)).float()
        centres = self._broadcast(centres)
        with torch.no_grad():
            table.copy_(centres.to(self.device))
        return states

    def code_space(self, states: torch.Tensor, level: int) -> torch.Tensor:
        return self.model.code_space(states.to(self.device), level, self._parents(level).to(self.device)).cpu()

    def init_codebook(self, level: int) -> None:
        """Spherical k-means in the code space: the codebook starts where the assignment's cosine puts the items."""
        states = self.code_space(self.centre(level), level).numpy()
        centroids = fit_kmeans(
            states,
            self.config.codebook_size[level],
            seed=self.config.seed + level,
            iterations=self.config.kmeans_iterations,
            spherical=True,
        )
        codebook = torch.nn.functional.normalize(torch.as_tensor(centroids, dtype=torch.float32), dim=-1)
        codebook = self._broadcast(codebook)
        with torch.no_grad():
            self.model.codebooks[level].copy_(codebook.to(self.device))

    @torch.no_grad()
    def assign_through(self, level: int) -> dict[str, Any]:
        """Greedy codes for positions ``<= level`` for every item, as the snapshot would assign them.

        Reassigning the earlier positions too keeps the prefixes the next stages are trained on equal to what the
        model itself decodes.
        """
        codes = self.greedy_codes(level + 1)
        changed = (codes[:, :level] != self.codes[:, :level]).any(dim=1).double().mean().item() if level else 0.0
        self.codes[:, : level + 1] = codes
        counts = torch.bincount(codes[:, level], minlength=self.config.codebook_size[level]).double()
        share = counts / counts.sum()
        entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
        return {
            "codes_used": int((counts > 0).sum()),
            "utilisation": round(float((counts > 0).double().mean()), 4),
            "perplexity": round(math.exp(entropy), 2),
            # items whose earlier codes moved while this position trained
            "earlier_codes_changed": round(changed, 4),
        }

    # -- training ------------------------------------------------------------------------------------------------

    def _stage_batches(self, stage: Stage, stage_index: int) -> list[list[int]]:
        """Every process's batches for the stage, in order; a resumed run rebuilds exactly the same list."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + stage_index)
        size = min(self.config.batch_size, len(self.items))
        needed = stage.steps * self.accelerator.num_processes
        batches: list[list[int]] = []
        while len(batches) < needed:
            order = torch.randperm(len(self.items), generator=generator)
            if stage.level > 0:
                # Items that share a prefix sit together, so that each batch holds siblings to contrast.
                prefix = self.codes[order, : stage.level]
                keys = torch.zeros(len(order), dtype=torch.long)
                for level in range(stage.level):
                    keys = keys * self.config.codebook_size[level] + prefix[:, level]
                order = order[torch.sort(keys, stable=True).indices]
            epoch = [order[i : i + size].tolist() for i in range(0, len(order) - size + 1, size)]
            shuffled = torch.randperm(len(epoch), generator=generator).tolist()
            batches.extend(epoch[i] for i in shuffled)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return batches[rank:needed:world]

    def _optimizer(self, stage: Stage) -> tuple[Any, Any]:
        model = self.model
        params = [model.start, model.summary_scale, *model.backbone.decoder_parameters()]
        params += list(model.reconstructor.parameters())
        if stage.quantised:
            params.append(model.codebooks[stage.level])
        groups = [{"params": [p for p in params if p.requires_grad], "lr": self.config.learning_rate}]
        if self.config.train_encoder:
            decoder = {id(p) for p in params}
            encoder = [p for p in model.backbone.encoder_parameters() if p.requires_grad and id(p) not in decoder]
            groups.append({"params": encoder, "lr": self.config.encoder_learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)
        warmup = max(1, int(stage.steps * self.config.warmup_share))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return self.accelerator.prepare(optimizer), schedule

    def _trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold: every weight that training can change (a frozen encoder is left out)."""
        model = self.accelerator.unwrap_model(self.wrapped)
        state = model.state_dict()
        frozen = tied_names(model)
        if not self.config.train_encoder:
            frozen |= {name for name, p in self.model.named_parameters() if not p.requires_grad}
        return {name: tensor for name, tensor in state.items() if name not in frozen}

    def _checkpoint(self, stage_index: int, step: int, optimizer: Any) -> None:
        if self.checkpoint_dir is None:
            return
        self.accelerator.wait_for_everyone()
        if self.is_main:
            progress = {
                "fingerprint": self.fingerprint,
                "stage": stage_index,
                "step": step,
                "history": self.history,
            }
            inner = getattr(optimizer, "optimizer", optimizer)
            arrays = {"codes": self.codes}
            if self.warm_codes is not None:
                arrays["warm_codes"] = self.warm_codes
            save_checkpoint(
                self.checkpoint_dir, progress=progress, model=self._trained_state(), optimizer=inner, arrays=arrays
            )
        self.accelerator.wait_for_everyone()

    def _resume(self) -> tuple[int, int, Any]:
        checkpoint = find_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return 0, 0, None
        if checkpoint.progress.get("fingerprint") != self.fingerprint:
            log.warning(
                "ignoring the checkpoint in %s: it belongs to other options or another catalogue", checkpoint.directory
            )
            return 0, 0, None
        missing, unexpected = self.model.load_state_dict(checkpoint.model, strict=False)
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        if unexpected or set(missing) - frozen - tied_names(self.model):
            log.warning("ignoring the checkpoint in %s: its weights do not fit this model", checkpoint.directory)
            return 0, 0, None
        if "codes" not in checkpoint.arrays or (self.warm and "warm_codes" not in checkpoint.arrays):
            log.warning("ignoring the checkpoint in %s: it lacks the assigned codes", checkpoint.directory)
            return 0, 0, None
        self.codes = checkpoint.arrays["codes"].clone()
        self.warm_codes = checkpoint.arrays.get("warm_codes")
        self.history = list(checkpoint.progress.get("history", []))
        stage, step = int(checkpoint.progress["stage"]), int(checkpoint.progress["step"])
        log.info("resumed from the checkpoint in %s at stage %d, step %d", checkpoint.directory, stage, step)
        return stage, step, checkpoint

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        cache_seconds = 0.0
        if not self.config.train_encoder:
            self.model.eval()
            self.items.cache_memory(self.model, self.config.inference_batch_size, self.device, self.progress)
            cache_seconds = time.perf_counter() - started
        first_stage, first_step, checkpoint = self._resume()
        resumed_at = {"stage": first_stage, "step": first_step} if checkpoint is not None else None
        summary_scale = None
        if checkpoint is None and not self.warm:
            summary_scale = round(self.calibrate_summary(), 4)
        if self.warm and checkpoint is None:
            # A warm retrain starts from the codes the previous snapshot gives every item of the grown catalogue.
            self.codes = self.greedy_codes()
            self.warm_codes = self.codes.clone()
        for stage_index, stage in enumerate(self.stages):
            if stage_index < first_stage:
                continue
            resuming = checkpoint is not None and stage_index == first_stage and first_step > 0
            self._run_stage(stage_index, stage, first_step if resuming else 0, checkpoint if resuming else None)
        # The last stage decoded every position greedily: these are the codes the model gives each item.
        final = self.codes
        stats: dict[str, Any] = {}
        if self.warm_codes is not None:
            stats["warm_code_stability"] = round((final == self.warm_codes).all(dim=1).double().mean().item(), 4)
        return {
            **stats,
            "stages": self.history,
            "encoder_cache_seconds": round(cache_seconds, 2),
            "initial_summary_scale": summary_scale,
            "train_seconds": round(time.perf_counter() - started, 2),
            "processes": self.accelerator.num_processes,
            "device": str(self.device),
            "mixed_precision": str(self.accelerator.mixed_precision),
            "resumed_from": resumed_at,
        }

    def _run_stage(self, stage_index: int, stage: Stage, start_step: int, checkpoint: Any) -> None:
        from accelerate.utils import set_seed

        stage_started = time.perf_counter()
        if stage.kmeans_init and start_step == 0:
            self.init_codebook(stage.level)
        elif not stage.quantised and start_step == 0:
            self.centre(stage.level)
        optimizer, schedule = self._optimizer(stage)
        if checkpoint is not None:
            checkpoint.restore_optimizer(getattr(optimizer, "optimizer", optimizer))
            for _ in range(start_step):
                schedule.step()
        batches = self._stage_batches(stage, stage_index)
        losses: list[dict[str, float]] = []
        bar = tqdm(
            total=stage.steps, initial=start_step, desc=stage.name, unit="step", disable=not self.progress, leave=False
        )
        self.wrapped.train()
        for step in range(start_step, stage.steps):
            # Masks and dropout depend only on (seed, stage, step), so a resumed run continues the same sequence.
            set_seed(self.config.seed + 7919 * stage_index + step + 1000003 * self.accelerator.process_index)
            batch = self.items.batch(batches[step], self.device)
            batch["prefix"] = self.codes[batches[step]].clamp(min=0).to(self.device)
            with self.accelerator.autocast():
                out = self.wrapped(batch, stage.level, stage.quantised)
            self.accelerator.backward(out["loss"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            values = {k: float(v.detach()) for k, v in out.items()}
            losses.append(values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", rec=f"{values['reconstruction']:.3f}")
            if (step + 1) % LOG_EVERY == 0:
                log.info(
                    "%s step %d/%d: %s",
                    stage.name,
                    step + 1,
                    stage.steps,
                    ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())),
                )
            if (step + 1) % self.config.checkpoint_every == 0 and step + 1 < stage.steps:
                self._checkpoint(stage_index, step + 1, optimizer)
        bar.close()
        record: dict[str, Any] = {"stage": stage.name, "steps": stage.steps, "resumed_at_step": start_step or None}
        if losses:
            for key in losses[0]:
                head = [row[key] for row in losses[:LOSS_WINDOW]]
                tail = [row[key] for row in losses[-LOSS_WINDOW:]]
                record[f"{key}_first"] = round(float(np.mean(head)), 4)
                record[f"{key}_last"] = round(float(np.mean(tail)), 4)
        if stage.quantised:
            # Training moved the shared decoder: re-centre every position so far on the catalogue (a drift common to
            # all items must not herd them onto one code), then decode them all again.
            for level in range(stage.level + 1):
                self.centre(level)
            record["assignment"] = self.assign_through(stage.level)
        record["seconds"] = round(time.perf_counter() - stage_started, 2)
        self.history.append(record)
        log.info("%s done: %s", stage.name, record)
        self._checkpoint(stage_index + 1, 0, None)
