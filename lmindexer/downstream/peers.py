"""Maintained sequential recommenders as peers: Cornac's SASRec, TIGER and LETTER on our histories, ranked as ours
are.

The downstream benchmark compares the generative recommender with these on exactly its split: each model trains on
the same histories (item_ids, most recent last) and ranks the whole catalogue for each of them; ``recommend`` returns
item_ids best first, like :meth:`lmindexer.downstream.generative.GenerativeModel.recommend`, with the same
``exclude_seen`` rule. Cornac (``cornac``, a benchmark dependency) is imported only when a peer is built.

- :meth:`CornacRecommender.sasrec`: SASRec (Kang & McAuley 2018) with Cornac's defaults.
- :meth:`CornacRecommender.tiger`: TIGER (Rajput et al. 2023, generative retrieval over semantic IDs) with Cornac's
  ``GRID_CONFIG`` recipe (residual k-means tokenizer over the item content embeddings given, no tokenizer training),
  the recipe Cornac ships for a short budget. It needs item content embeddings (one row per item_id).
- :meth:`CornacRecommender.letter`: LETTER (Wang et al. 2024, a learnable tokenizer for generative recommendation)
  with Cornac's ``LETTER_CONFIG`` (the released recipe with the paper-wide regularisation weights): a four-level
  RQ-VAE tokenizer over the item content embeddings, aligned with collaborative item embeddings and kept diverse by
  constrained k-means over its codebooks, then TIGER's generator. As in the paper, the collaborative embeddings are a
  SASRec's item vectors at the tokenizer's latent width, that SASRec trained first on the same histories for the same
  epochs (:class:`LetterRecommender`).

Each trains for its own recipe's epochs unless ``n_epochs`` (and LETTER's ``tokenizer_epochs``) say otherwise: the
benchmark gives them either its generative model's budget or their own (``--peer-budget``).

Both train on all the histories given and are not selected on a validation split (``model_selection="last"``): the
benchmark's split holds out only each user's last item, which is the test target, so there is nothing else to select
on without training on less than the other models. Overrides (``n_epochs``, ``device``, ...) go to the Cornac model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmindexer.errors import ConfigError


class CornacRecommender:
    """A Cornac next-item model behind the interface of the platform's recommenders."""

    def __init__(self, model: Any, *, needs_item_features: bool = False) -> None:
        self.model = model
        self.needs_item_features = needs_item_features
        self._item_ids: list[str] = []
        self._index: dict[str, int] = {}

    @property
    def name(self) -> str:
        return str(self.model.name)

    @classmethod
    def sasrec(cls, *, seed: int = 0, **overrides: Any) -> CornacRecommender:
        from cornac.models import SASRec

        options = {"seed": seed, "model_selection": "last", "device": "cpu", **overrides}
        return cls(SASRec(**options))

    @classmethod
    def letter(
        cls, *, seed: int = 0, n_epochs: int | None = None, tokenizer_epochs: int | None = None, **overrides: Any
    ) -> LetterRecommender:
        """``n_epochs`` (the generator's, and the collaborative SASRec's) and ``tokenizer_epochs`` default to the
        released recipe's (``LETTER_CONFIG``: 200 and 10,000)."""
        from cornac.models import LETTER
        from cornac.models.letter import LETTER_CONFIG

        options = {
            **LETTER_CONFIG,
            "seed": seed,
            "model_selection": "last",
            "device": "cpu",
            # The constrained k-means' restarts in 2 processes, not the released 10: any count above 1 draws their
            # seeds up front as the release does (1 would run them on another random stream), so only speed changes.
            "rqvae_kmeans_jobs": 2,
            **({} if n_epochs is None else {"n_epochs": n_epochs}),
            **({} if tokenizer_epochs is None else {"rqvae_n_epochs": tokenizer_epochs}),
            **overrides,
        }
        model = LETTER(**options)
        collaborative = cls.sasrec(seed=seed, n_epochs=model.n_epochs, embedding_dim=model.rqvae_latent_dim)
        return LetterRecommender(model, collaborative=collaborative)

    @classmethod
    def tiger(cls, *, seed: int = 0, **overrides: Any) -> CornacRecommender:
        from cornac.models import TIGER
        from cornac.models.tiger import GRID_CONFIG

        options = {**GRID_CONFIG, "seed": seed, "model_selection": "last", "device": "cpu", **overrides}
        return cls(TIGER(**options), needs_item_features=True)

    def fit(
        self, histories: Sequence[Sequence[str]], item_features: Mapping[str, np.ndarray] | None = None
    ) -> CornacRecommender:
        """Train on ``histories`` (one per user, most recent last); ``item_features`` maps item_id -> embedding."""
        self._fit_train_set(self._train_set(histories, item_features))
        return self

    def _fit_train_set(self, train_set: Any) -> None:
        self.model.fit(train_set)
        self._index = dict(train_set.iid_map)
        self._item_ids = [item_id for item_id, _ in sorted(self._index.items(), key=lambda pair: pair[1])]

    def _train_set(self, histories: Sequence[Sequence[str]], item_features: Mapping[str, np.ndarray] | None) -> Any:
        """Cornac's dataset of ``histories`` (validated), with the item features where the model needs them."""
        from cornac.data import FeatureModality, SequentialDataset

        if isinstance(histories, str) or any(isinstance(h, str) for h in histories):
            raise ConfigError("histories must be sequences of item_ids, not strings")
        rows = [(f"u{user}", item_id, position) for user, history in enumerate(histories) for position, item_id in
                enumerate(history)]  # fmt: skip
        if not rows:
            raise ConfigError("cannot fit a recommender on histories without any item")
        train_set = SequentialDataset.from_sit(rows, seed=getattr(self.model, "seed", None))
        if self.needs_item_features:
            if item_features is None:
                raise ConfigError(f"{self.name} needs item content embeddings (item_features)")
            missing = [item_id for item_id in train_set.iid_map if item_id not in item_features]
            if missing:
                raise ConfigError(f"{len(missing)} items of the histories have no embedding, e.g. {missing[:3]}")
            ids = list(train_set.iid_map)
            modality = FeatureModality(features=np.stack([item_features[i] for i in ids]).astype("float32"), ids=ids)
            modality.build(id_map=train_set.iid_map)
            train_set.add_modalities(item_feature=modality)
        return train_set

    def item_embeddings(self) -> tuple[np.ndarray, list[str]]:
        """The trained item vectors of a model that has them (SASRec's input embeddings), row i for item_ids[i]."""
        if not self._item_ids:
            raise ConfigError(f"{self.name} is not fitted: call fit() first")
        table = getattr(getattr(self.model, "model", None), "item_emb", None)
        if table is None:
            raise ConfigError(f"{self.name} has no item embedding table")
        weights = table.weight.detach().cpu().numpy()
        return weights[[self._index[item_id] for item_id in self._item_ids]].astype("float32"), list(self._item_ids)

    def recommend(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool = False) -> list[list[str]]:
        """The ``k`` best item_ids for each history (items never seen in training cannot be recommended, and
        history items unknown to the model are skipped); ``exclude_seen`` leaves out the history's items."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        if not self._item_ids:
            raise ConfigError(f"{self.name} is not fitted: call fit() first")
        results = []
        for history in histories:
            known = [self._index[item_id] for item_id in history if item_id in self._index]
            scores = np.asarray(self.model.score(None, known), dtype="float64")[: len(self._item_ids)].copy()
            if exclude_seen:
                scores[known] = -np.inf
            # Cornac's beam scoring gives items outside the beam a floor score: those never fill the top k.
            order = np.argsort(-scores, kind="stable")[:k]
            results.append([self._item_ids[i] for i in order if np.isfinite(scores[i]) and scores[i] > -1e9])
        return results


class LetterRecommender(CornacRecommender):
    """Cornac's LETTER with the collaborative embeddings its tokenizer aligns to: a SASRec's item vectors, trained
    first on the same histories (the paper's source of them), row for row by item_id."""

    def __init__(self, model: Any, *, collaborative: CornacRecommender) -> None:
        super().__init__(model, needs_item_features=True)
        self.collaborative = collaborative

    def fit(
        self, histories: Sequence[Sequence[str]], item_features: Mapping[str, np.ndarray] | None = None
    ) -> LetterRecommender:
        train_set = self._train_set(histories, item_features)  # refuses bad input before anything trains
        self.collaborative.fit(histories)
        embeddings, item_ids = self.collaborative.item_embeddings()
        self.model.cf_embeddings, self.model.cf_embedding_ids = embeddings, item_ids
        self._fit_train_set(train_set)
        return self
