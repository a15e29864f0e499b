"""``rqvae``: a residual-quantised VAE over frozen embeddings (the TIGER recipe).

An MLP encoder maps the embedding to a small latent; L codebooks quantise it residually; an MLP decoder rebuilds the
embedding from the summed code vectors. Loss = reconstruction + codebook + beta * commitment (straight-through
gradients to the encoder). Codebooks start from k-means on the encoder's latents; codes that fall out of use during an
epoch are restarted on residuals of that epoch, so the codebooks stay utilised.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lmindexer.errors import SnapshotError
from lmindexer.indexers.embedding import EmbeddingIndexer
from lmindexer.indexers.kmeans import centroids_by_distance, fit_kmeans, nearest_centroid
from lmindexer.methods import RQVAEConfig


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, config: RQVAEConfig) -> None:
        super().__init__()
        widths = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = _mlp(widths, config.dropout)
        self.decoder = _mlp(widths[::-1], config.dropout)
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(k, config.latent_dim) * 0.1) for k in config.codebook_size]
        )

    def quantise(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Codes, the summed code vectors, and the residual each level saw."""
        residual = latent
        quantised = torch.zeros_like(latent)
        codes, residuals = [], []
        for codebook in self.codebooks:
            residuals.append(residual)
            distances = (codebook * codebook).sum(1)[None, :] - 2 * residual @ codebook.T
            code = distances.argmin(dim=1)
            vector = codebook[code]
            codes.append(code)
            quantised = quantised + vector
            residual = residual - vector.detach()
        return torch.stack(codes, dim=1), quantised, residuals

    def forward(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        latent = self.encoder(x)
        codes, _, residuals = self.quantise(latent)
        codebook_loss = x.new_zeros(())
        commitment_loss = x.new_zeros(())
        for level, codebook in enumerate(self.codebooks):
            vector = codebook[codes[:, level]]
            codebook_loss = codebook_loss + ((residuals[level].detach() - vector) ** 2).sum(-1).mean()
            commitment_loss = commitment_loss + ((residuals[level] - vector.detach()) ** 2).sum(-1).mean()
        quantised = sum(codebook[codes[:, i]] for i, codebook in enumerate(self.codebooks))
        # Straight-through: the decoder sees the codes, the encoder gets the decoder's gradient.
        decoded = self.decoder(latent + (quantised - latent).detach())
        reconstruction = ((decoded - x) ** 2).sum(-1).mean()
        loss = reconstruction + codebook_loss + beta * commitment_loss
        return loss, reconstruction, codes, torch.stack(residuals, dim=1)


class RQVAEIndexer(EmbeddingIndexer):
    """RQ-VAE over frozen MiniLM embeddings (the TIGER recipe)."""

    method = "rqvae"
    config_class = RQVAEConfig
    config: RQVAEConfig

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.model: RQVAE | None = None
        self.input_dim: int | None = None

    def _build(self, input_dim: int) -> RQVAE:
        torch.manual_seed(self.config.seed)
        self.input_dim = input_dim
        self.model = RQVAE(input_dim, self.config)
        return self.model

    @torch.no_grad()
    def _kmeans_init(self, model: RQVAE, data: torch.Tensor) -> None:
        residual = model.encoder(data).double().numpy()
        for level, codebook in enumerate(model.codebooks):
            centroids = fit_kmeans(residual, codebook.shape[0], seed=self.config.seed + level)
            codebook[: len(centroids)] = torch.from_numpy(centroids)
            residual = residual - centroids.astype(np.float64)[nearest_centroid(residual, centroids)]

    def fit_embeddings(self, embeddings: np.ndarray, *, progress: bool) -> dict[str, Any]:
        data = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        model = self._build(data.shape[1])
        generator = torch.Generator().manual_seed(self.config.seed)
        if self.config.kmeans_init:
            sample = torch.randperm(len(data), generator=generator)[: min(len(data), 16_384)]
            self._kmeans_init(model, data[sample])
        optimiser = torch.optim.Adam(model.parameters(), lr=self.config.learning_rate)
        batch_size = min(self.config.batch_size, len(data))
        history: list[float] = []
        restarts = 0
        bar = tqdm(range(self.config.epochs), desc="rqvae epochs", disable=not progress, leave=False)
        model.train()
        for _epoch in bar:
            usage = [torch.zeros(k, dtype=torch.long) for k in self.codebook_sizes]
            epoch_loss, epoch_recon, steps = 0.0, 0.0, 0
            order = torch.randperm(len(data), generator=generator)
            last_residuals = None
            for start in range(0, len(data) - batch_size + 1, batch_size):
                batch = data[order[start : start + batch_size]]
                loss, reconstruction, codes, residuals = model(batch, self.config.commitment_weight)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                for level in range(self.levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=self.codebook_sizes[level])
                epoch_loss += float(loss.detach())
                epoch_recon += float(reconstruction.detach())
                steps += 1
                last_residuals = residuals.detach()
            if self.config.restart_dead_codes and last_residuals is not None:
                restarts += self._restart_dead_codes(model, usage, last_residuals, generator)
            history.append(epoch_loss / max(steps, 1))
            bar.set_postfix(loss=f"{history[-1]:.4f}", recon=f"{epoch_recon / max(steps, 1):.4f}")
        model.eval()
        return {
            "loss_first_epoch": round(history[0], 6),
            "loss_last_epoch": round(history[-1], 6),
            "dead_code_restarts": restarts,
        }

    @torch.no_grad()
    def _restart_dead_codes(
        self, model: RQVAE, usage: list[torch.Tensor], residuals: torch.Tensor, generator: torch.Generator
    ) -> int:
        restarted = 0
        for level, codebook in enumerate(model.codebooks):
            dead = (usage[level] == 0).nonzero().flatten()
            if len(dead) == 0:
                continue
            pick = torch.randint(0, residuals.shape[0], (len(dead),), generator=generator)
            codebook[dead] = residuals[pick, level]
            restarted += len(dead)
        return restarted

    @torch.no_grad()
    def encode_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise SnapshotError("the rqvae indexer has no model; fit it or load a snapshot")
        # float64 so an item's code never depends on the batch it was computed in.
        model = self.model.double().eval()
        latent = model.encoder(torch.from_numpy(np.asarray(embeddings, dtype=np.float64)))
        codes, _, _ = model.quantise(latent)
        self.model.float()
        return codes.numpy().astype(np.int64)

    @torch.no_grad()
    def last_level_preferences(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # The last codebook's vectors from nearest to farthest from the residual the last level sees.
        if self.model is None:
            raise SnapshotError("the rqvae indexer has no model; fit it or load a snapshot")
        model = self.model.double().eval()
        try:
            latent = model.encoder(torch.from_numpy(np.asarray(embeddings, dtype=np.float64)))
            _, _, residuals = model.quantise(latent)
            last = residuals[-1].numpy()
            codebook = model.codebooks[-1].detach().numpy()
        finally:
            self.model.float()
        return centroids_by_distance(last, codebook)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.model is None:
            raise SnapshotError("the rqvae indexer has no model")
        return {name: tensor.float() for name, tensor in self.model.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        first = tensors.get("encoder.0.weight")
        if first is None:
            raise SnapshotError("rqvae snapshot lacks tensor encoder.0.weight")
        model = self._build(int(first.shape[1]))
        try:
            model.load_state_dict(dict(tensors), strict=True)
        except RuntimeError as exc:
            raise SnapshotError(f"rqvae snapshot does not match its config: {str(exc).splitlines()[0]}") from exc
        model.eval()
