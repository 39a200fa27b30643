"""The unify stage: parse downloaded sources into one manifest, sample it and split it.

Everything between parsing and writing works on columns (``manifest.RecordTable``, Arrow arrays),
not on a ``Record`` per row. Steps: parse each source (``Source.table``), cached per source as an
Arrow file under ``manifests/.cache/`` keyed by the source's ledger identity, so an interrupted
unify resumes without re-parsing; make ids unique across sources; drop records
whose audio is missing (a cheap existence check, no decoding), that the source's
last complete ``verify`` of the same download found corrupt, truncated or of the wrong
duration, or whose duration is out of range; sample (``manifest.sample_indices``); split artist-aware
80/10/10 (``manifest.split_assignment``: connected components of recording group, artist and album,
bucketed by a seeded hash); write with ``manifest.write_manifest``. Records are built only for the
steps that edit them one by one: ``--captions FILE`` and ``--captions llm``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .datasets import dataset_identity, download_status, resolve_source
from .errors import MtxError
from .llm_captions import LLMConfig
from .manifest import (SPLITS, Record, RecordTable, SplitSummary, diff_manifests, from_state_dir, read_manifest,
                       sample_indices, split_assignment, state_relative, write_manifest)
from .progress import NullProgress, Progress
from .sources import source_names
from .state import (DONE, Resume, StageStatus, StateDir, atomic_write_bytes, begin_stage, check_name, config_hash,
                    is_done, load_stage, stage_function, to_jsonable)

log = logging.getLogger(__name__)

CACHE_VERSION = 5   # 2: records carry their recording's group key; 3: folder artist_source; 4: album_key;
                    # 5: an Arrow file of the record table
MISSING_EXAMPLES = 5
# Problems found by `mtx verify` that make a file useless downstream (a checksum mismatch or a
# different sample rate still decodes, so those stay in).
VERIFY_REJECTS = ("corrupt", "wrong_duration")
CAPTION_MODES = ("tags", "llm")


@dataclass
class UnifyConfig:
    datasets: list[str] | None = None      # None = every source with a dataset dir
    max_samples: int | None = None
    stratify_by: str = "dataset"           # dataset | duration | none
    samples_per_dataset: int | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    seed: int = 0
    name: str = "default"
    dry_run: bool = False
    keep_official_splits: bool = False
    captions: str = "tags"                 # tags: synthesised where a source has no human caption; llm
    descriptions_per_song: int = 5         # --captions llm
    llm: LLMConfig | None = None           # --captions llm: endpoint, model, concurrency (None: defaults)
    caption_file: str | None = None        # --captions FILE: your own captions and labels (caption_file.py)
    resume: Resume = Resume.FRESH


@dataclass
class CompositionRow:
    dataset: str
    count: int
    hours: float
    train: int
    val: int
    test: int


@dataclass
class UnifyResult:
    name: str
    path: str
    records: int
    composition: list[CompositionRow] = field(default_factory=list)
    missing_audio: int = 0
    missing_examples: list[str] = field(default_factory=list)
    dropped_duration: int = 0
    failed_verify: int = 0                 # left out because `mtx verify` flagged their file
    failed_verify_examples: list[str] = field(default_factory=list)
    parsed: int = 0
    dry_run: bool = False
    skipped: bool = False
    captions: str = "tags"                 # which caption mode ran
    synthesised: int = 0                   # records whose caption was synthesised from tags/features
    llm: dict[str, Any] | None = None      # --captions llm: model, calls, cached, failed, tokens
    download_failures: dict[str, int] = field(default_factory=dict)   # source -> items its download failed
    caption_file: dict[str, Any] | None = None      # --captions FILE: rows matched, unknown keys, fields set
    artist_sources: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> artist rule -> records
    dominant_artists: list[list[Any]] = field(default_factory=list)          # [artist, records] over the share
    folders: list[CompositionRow] = field(default_factory=list)   # split sizes per top-level folder of a library
    # --keep-official-splits: records moved so that no recording/artist component crosses splits
    split_conflicts: int = 0
    split_overridden: int = 0
    # A changed library updates its manifest in place: what changed (added, changed, moved, removed,
    # unchanged records); None for a manifest made for the first time.
    changes: dict[str, int] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], skipped: bool = False) -> "UnifyResult":
        known = set(cls.__dataclass_fields__)
        out = cls(**{k: v for k, v in d.items() if k in known and k not in ("composition", "folders")})
        out.composition = [CompositionRow(**c) for c in d.get("composition", [])]
        out.folders = [CompositionRow(**c) for c in d.get("folders", [])]
        out.skipped = skipped
        return out


@dataclass
class Filtered:
    rows: list[int]                        # the rows of the parsed table that are kept
    missing_audio: int = 0
    missing_examples: list[str] = field(default_factory=list)
    dropped_duration: int = 0
    failed_verify: int = 0
    failed_verify_examples: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pure steps
def prefix_ids(table: RecordTable, source: str) -> RecordTable:
    """Make ids unique across sources: ``<source>:<id>`` unless already prefixed with the source name; a
    record without a dataset gets the source's name."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(table):
        return table
    ids = table.column("id") if "id" not in table.encoded else pa.array(table.ids(), pa.string())
    prefixed = pc.starts_with(ids, f"{source}:")
    for sep in ("-", "_", "/"):
        prefixed = pc.or_(prefixed, pc.starts_with(ids, f"{source}{sep}"))
    ids = pc.if_else(prefixed, ids, pc.binary_join_element_wise(f"{source}:", ids, ""))
    dataset = table.column("dataset")
    if "dataset" in table.encoded or not pa.types.is_string(dataset.type):
        dataset = pa.array([d or source for d in table.values("dataset")], pa.string())
    else:
        dataset = pc.if_else(pc.fill_null(pc.equal(dataset, ""), True), source, dataset)
    return table.set("id", ids).set("dataset", dataset)


def filter_records(table: RecordTable, min_duration: float | None, max_duration: float | None,
                   check_audio: bool = True, rejected: dict[str, str] | None = None) -> Filtered:
    """The rows with audio, without a file verify rejected (``rejected``: audio path -> why), in range."""
    import numpy as np

    durations = np.asarray(table.values("duration"), dtype=np.float64)
    ok = np.ones(len(table), dtype=bool)
    if min_duration is not None:
        ok &= durations >= min_duration
    if max_duration is not None:
        ok &= durations <= max_duration
    out = Filtered(rows=[])
    if not rejected and not check_audio:
        out.rows = np.flatnonzero(ok).tolist()
        out.dropped_duration = int(len(ok) - ok.sum())
        return out
    exists, normpath = os.path.exists, os.path.normpath
    for i, (id_, path, in_range) in enumerate(zip(table.ids(), table.values("audio_path"), ok.tolist())):
        why = rejected.get(normpath(path)) if rejected else None
        if why is not None:
            out.failed_verify += 1
            if len(out.failed_verify_examples) < MISSING_EXAMPLES:
                out.failed_verify_examples.append(f"{id_}: {why}")
        elif check_audio and not exists(path):
            out.missing_audio += 1
            if len(out.missing_examples) < MISSING_EXAMPLES:
                out.missing_examples.append(f"{id_}: {path}")
        elif not in_range:
            out.dropped_duration += 1
        else:
            out.rows.append(i)
    return out


def select_and_split(table: RecordTable, cfg: UnifyConfig,
                     previous: dict[str, str] | None = None) -> tuple[RecordTable, SplitSummary]:
    plain = "dataset" not in table.encoded and "duration" not in table.encoded
    datasets = table.column("dataset") if plain else table.values("dataset")
    durations = table.column("duration").to_numpy(zero_copy_only=False) if plain else table.values("duration")
    rows = sample_indices(table.ids(), datasets, durations,
                          max_samples=cfg.max_samples, stratify_by=cfg.stratify_by,
                          samples_per_dataset=cfg.samples_per_dataset, seed=cfg.seed)
    chosen = table.take(rows)
    splits, summary = split_assignment(chosen.ids(), *chosen.split_keys(), chosen.values("split"), seed=cfg.seed,
                                       keep_official=cfg.keep_official_splits, previous=previous)
    return chosen.set("split", splits), summary


def composition(table: RecordTable) -> list[CompositionRow]:
    return _split_sizes([d or "unknown" for d in table.values("dataset")], table)


def _split_sizes(keys: Sequence[str | None], table: RecordTable) -> list[CompositionRow]:
    """Records, hours and split sizes per value of ``keys`` (one per record; None is left out), sorted."""
    counts: dict[str, dict[str, int]] = {}
    records: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    for key, split, duration in zip(keys, table.values("split"), table.values("duration")):
        if key is None:
            continue
        c = counts.get(key)
        if c is None:
            c = counts[key] = dict.fromkeys(SPLITS, 0)
        if split in c:
            c[split] += 1
        records[key] += 1
        seconds[key] += duration
    return [CompositionRow(dataset=k, count=records[k], hours=round(seconds[k] / 3600, 4), **counts[k])
            for k in sorted(counts)]


def _artists_and_folders(table: RecordTable) -> dict[str, Any]:
    """Which rule named each record's artist (per source), artists too big for balanced splits, and the
    split sizes per top-level folder of a library (``relative_path``) with more than one."""
    from .manifest import dominant_artists

    datasets = [d or "unknown" for d in table.values("dataset")]
    sources: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    if table.has("artist_source"):     # set where a rule named the artist (folder, a caption file)
        for ds, rule in zip(datasets, table.values("artist_source")):
            if rule:
                sources[ds][rule] += 1
    dominant = dominant_artists(table.split_keys()[1], table.values("artist"))
    for artist, n in dominant:
        log.warning("artist %r holds %d of %d records (%.0f%%): they all go to one split, so the splits cannot "
                    "be balanced", artist, n, len(table), 100 * n / len(table))
    folders: list[CompositionRow] = []
    if table.has("relative_path"):
        tops = [f"{ds}/{rel.split('/', 1)[0] if '/' in rel else '.'}" if isinstance(rel, str) else None
                for ds, rel in zip(table.values("dataset"), table.values("relative_path"))]
        rows = _split_sizes(tops, table)
        per_source: dict[str, int] = defaultdict(int)
        for row in rows:
            per_source[row.dataset.split("/", 1)[0]] += 1
        folders = [row for row in rows if per_source[row.dataset.split("/", 1)[0]] > 1]
    return {"artist_sources": {ds: dict(sorted(c.items())) for ds, c in sorted(sources.items())},
            "dominant_artists": [[a, n] for a, n in dominant], "folders": folders}


def _validate(cfg: UnifyConfig) -> None:
    check_name("manifest", cfg.name)
    if cfg.stratify_by not in ("dataset", "duration", "none"):
        raise MtxError(f"unknown --stratify-by {cfg.stratify_by!r}", hint="choose dataset, duration or none")
    for flag, v in (("--max-samples", cfg.max_samples), ("--samples-per-dataset", cfg.samples_per_dataset)):
        if v is not None and v < 1:
            raise MtxError(f"{flag} must be at least 1 (got {v})")
    if cfg.captions not in CAPTION_MODES:
        raise MtxError(f"unknown --captions {cfg.captions!r}", hint="choose tags (no LLM) or llm")
    if cfg.descriptions_per_song < 1:
        raise MtxError(f"--descriptions-per-song must be at least 1 (got {cfg.descriptions_per_song})")
    if cfg.min_duration is not None and cfg.max_duration is not None and cfg.min_duration > cfg.max_duration:
        raise MtxError(f"--min-duration {cfg.min_duration} is above --max-duration {cfg.max_duration}",
                       hint="swap them: --min-duration keeps tracks at least that long, --max-duration at most that")


# --------------------------------------------------------------------------- parse cache
def _cache_path(state: StateDir, source: str, identity: dict[str, Any]) -> Path:
    key = config_hash({"source": source, "identity": identity, "v": CACHE_VERSION, "mtx": __version__})
    return state.manifests_dir / ".cache" / f"{source}-{key}.arrow"


def _parse_source(state: StateDir, name: str, identity: dict[str, Any], use_cache: bool,
                  write_cache: bool) -> RecordTable:
    import pyarrow as pa

    path = _cache_path(state, name, identity)
    if use_cache and path.exists():
        try:
            with pa.OSFile(str(path)) as f:
                table = pa.ipc.open_file(f).read_all()
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            log.info("%s: using %d parsed records from the cache", name, table.num_rows)
            return _moved(RecordTable(table.replace_schema_metadata(None), json.loads(meta["encoded"])),
                          meta["root"], str(state.root))
        except (pa.ArrowInvalid, OSError, KeyError, ValueError):
            log.warning("%s: parse cache %s is unreadable; parsing again", name, path)
    source = resolve_source(name)
    table = prefix_ids(source.table(state.dataset_dir(name)), name)
    if write_cache:
        # One committed unit per source: the cache file appears atomically or not at all. It records the
        # state dir it was made in, so a moved state dir reuses it (see _moved).
        t = table.table.replace_schema_metadata({"root": str(state.root), "encoded": json.dumps(sorted(table.encoded))})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, t.schema) as writer:
            writer.write_table(t)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return table


def _moved(table: RecordTable, old_root: str, new_root: str) -> RecordTable:
    """``table``'s audio paths under ``old_root`` moved to ``new_root`` (a state dir moved since)."""
    import pyarrow.compute as pc

    if old_root == new_root or not len(table):
        return table
    paths = table.column("audio_path")
    under = pc.fill_null(pc.starts_with(paths, old_root.rstrip(os.sep) + os.sep), False)
    moved = pc.replace_substring(paths, old_root.rstrip(os.sep) + os.sep, new_root.rstrip(os.sep) + os.sep,
                                 max_replacements=1)
    return table.set("audio_path", pc.if_else(under, moved, paths))


def _select_datasets(state: StateDir, requested: list[str] | None) -> tuple[list[str], dict[str, int]]:
    """The sources to unify and, per source, how many items its download left failed.

    A download that is complete with failures is used (its failed items are simply absent);
    an interrupted or failed one is left out when sources are picked automatically, and
    refused when named with --datasets.
    """
    if requested:
        names = list(dict.fromkeys(requested))
        for n in names:
            resolve_source(n)
            if not state.dataset_dir(n).is_dir():
                raise MtxError(f"dataset {n!r} is not downloaded ({state.dataset_dir(n)} does not exist)",
                               hint=f"run `mtx download {n}` first")
        statuses = [download_status(state, n) for n in names]
        for st in statuses:
            if st.status == StageStatus.FAILED.value:
                raise MtxError(f"the download of {st.source} failed", hint=f"see `mtx download {st.source}`; "
                               f"fix the cause and rerun it")
    else:
        statuses = []
        for n in source_names():
            if not state.dataset_dir(n).is_dir():
                continue
            st = download_status(state, n)
            # An interrupted download has no completion artifact yet: leave it out instead of failing
            # the whole unify (naming it explicitly with --datasets still reports the problem).
            if not st.usable:
                log.warning("skipping %s: its download is %s (run `mtx download %s --continue`)", n,
                            "interrupted" if st.status in (StageStatus.RUNNING.value, StageStatus.PARTIAL.value)
                            else st.status, n)
                continue
            statuses.append(st)
        names = [st.source for st in statuses]
    if not names:
        raise MtxError(f"no downloaded datasets in {state.root / 'datasets'}",
                       hint="run `mtx download synth` (offline) or another source first")
    failed = {st.source: st.failed_items for st in statuses if st.failed_items}
    for n, k in failed.items():
        log.warning("%s: %d item(s) failed to download and are not in the manifest "
                    "(`mtx download %s --retry-failed` retries them)", n, k, n)
    return names, failed


def verify_rejects(state: StateDir, name: str, identity: dict[str, Any]) -> dict[str, str]:
    """Audio paths the last complete ``mtx verify`` of this very download rejected -> problem and detail.

    Read from verify's stage record (the state contract), and only when it checked the dataset
    as it is now: a re-download changes the ledger identity, and an older verdict is ignored.
    """
    record = load_stage(state, f"verify:{name}")
    if record is None or record.status not in DONE:  # complete, or complete with failures (bad files)
        return {}
    if any(record.config.get(k) != v for k, v in identity.items()):
        log.info("%s: the last verify checked an older download; its verdicts are not used", name)
        return {}
    return {from_state_dir(str(b["path"]), state.root): f"{b['problem']} ({b.get('detail', '')})".replace(" ()", "")
            for b in record.result.get("bad", []) if b.get("problem") in VERIFY_REJECTS}


# --------------------------------------------------------------------------- stage
@stage_function
def run_unify(state: StateDir, cfg: UnifyConfig, progress: Progress | None = None) -> UnifyResult:
    progress = progress or NullProgress()
    _validate(cfg)
    names, download_failures = _select_datasets(state, cfg.datasets)
    identities = {n: dataset_identity(state.dataset_dir(n)) for n in names}
    out_path = state.manifest_path(cfg.name)
    config = {k: v for k, v in asdict(cfg).items()
              if k not in ("resume", "dry_run", "name", "datasets", "llm", "descriptions_per_song", "caption_file")}
    config["datasets"] = names
    if cfg.captions == "llm":
        config["llm"] = _llm_config(cfg).identity()
    config["inputs"] = identities
    captions_file = None
    if cfg.caption_file is not None:
        from .caption_file import read_caption_file

        captions_file = read_caption_file(cfg.caption_file)   # a bad file is refused before any work
        config["caption_file"] = captions_file.digest          # its content, not its name, is the identity
    rejected = {p: why for n in names for p, why in verify_rejects(state, n, identities[n]).items()}
    if rejected:
        # Verifying again changes what goes into the manifest, so it is part of the stage's identity.
        # (state-dir relative, so a moved state dir is the same verdict)
        config["verify_rejects"] = config_hash(sorted(state_relative(p, state.root) for p in rejected))

    run = None
    previous: list[Record] | None = None
    if not cfg.dry_run:
        mode, previous = _update_mode(state, cfg, config, out_path)
        old_inputs = (load_stage(state, f"unify:{cfg.name}").config or {}).get("inputs", {}) \
            if previous is not None else None

        def discard() -> None:
            if old_inputs is not None:
                # An update keeps the manifest until the new one replaces it; only stale parse caches go.
                for n, ident in old_inputs.items():
                    if ident != identities.get(n):
                        _cache_path(state, n, ident).unlink(missing_ok=True)
                return
            out_path.unlink(missing_ok=True)
            for n in names:
                _cache_path(state, n, identities[n]).unlink(missing_ok=True)

        run = begin_stage(state, "unify", f"unify:{cfg.name}", config=config, mode=mode, discard=discard,
                          rename_hint="choose another manifest name with --name")
        if run.already_complete:
            done = UnifyResult.from_dict(run.record.result, skipped=True)
            done.path = str(out_path)       # where it is now (the state dir may have moved since)
            return done

    log.info("unifying %s into manifest %r", ", ".join(names), cfg.name)
    tables: list[RecordTable] = []
    with progress.task("Parsing sources", total=len(names), unit="sources") as task:
        for i, name in enumerate(names):
            tables.append(_parse_source(state, name, identities[name], use_cache=True, write_cache=not cfg.dry_run))
            if run is not None:
                run.update(parsed_sources=names[: i + 1])
            task.advance(1)
            progress.check_interrupt()
    parsed = RecordTable.concat(tables)
    del tables

    _check_unique(parsed)
    merged = None
    if captions_file is not None:
        from .caption_file import merge_caption_file

        records = parsed.records()
        merged = asdict(merge_caption_file(records, captions_file))
        parsed = RecordTable.from_records(records)
        del records
    filtered = filter_records(parsed, cfg.min_duration, cfg.max_duration, rejected=rejected)
    if filtered.failed_verify:
        log.warning("%d record(s) whose file `mtx verify` found corrupt, truncated or of the wrong duration "
                    "are left out, e.g. %s", filtered.failed_verify, filtered.failed_verify_examples[0])
    if filtered.missing_audio:
        log.warning("%d record(s) have no audio file and are left out, e.g. %s", filtered.missing_audio,
                    filtered.missing_examples[0])
    if not filtered.rows:
        raise MtxError("no records left to unify" + (f" ({filtered.missing_audio} have no audio file)"
                                                     if filtered.missing_audio else ""),
                       hint="check the downloads with `mtx verify SOURCE` and the --min/--max-duration range")
    chosen, splits = select_and_split(_kept(parsed, filtered.rows), cfg,
                                      {r.id: r.split for r in previous if r.split} if previous else None)
    llm = None
    if cfg.captions == "llm" and not cfg.dry_run:
        records = chosen.records()
        llm = asdict(_caption_with_llm(state, records, cfg, progress))
        chosen = RecordTable.from_records(records)
        del records
    synthesised = chosen.values("caption_source").count("tags") if chosen.has("caption_source") else 0
    reports = {"caption_file": merged, **_artists_and_folders(chosen)}
    result = UnifyResult(**reports,
                         name=cfg.name, path=str(out_path), records=len(chosen), composition=composition(chosen),
                         missing_audio=filtered.missing_audio, missing_examples=filtered.missing_examples,
                         dropped_duration=filtered.dropped_duration, failed_verify=filtered.failed_verify,
                         failed_verify_examples=filtered.failed_verify_examples, parsed=len(parsed),
                         dry_run=cfg.dry_run, download_failures=download_failures,
                         split_conflicts=splits.official_conflicts, split_overridden=splits.overridden,
                         captions=cfg.captions, synthesised=synthesised, llm=llm,
                         changes=diff_manifests(previous, chosen).to_dict() if previous is not None else None)
    if run is not None:
        write_manifest(out_path, chosen)
        run.complete(result=asdict(result))
    return result


# The config keys that name the inputs' contents: when only they changed, the library changed.
_INPUT_KEYS = {"inputs", "verify_rejects"}


def _update_mode(state: StateDir, cfg: UnifyConfig, config: dict[str, Any],
                 out_path: Path) -> tuple[Resume, list[Record] | None]:
    """(how to begin the stage, the manifest it updates in place or None).

    A finished manifest whose sources changed since (a rescanned folder, a download that added
    items, a new verify verdict) is redone in place: no ``--force`` is needed for a changed library,
    and the records it had keep their splits (see ``assign_splits``). Any other config change is
    left to the stage contract (refused unless ``--force``).
    """
    if cfg.resume is Resume.FORCE or not out_path.is_file():
        return cfg.resume, None
    record = load_stage(state, f"unify:{cfg.name}")
    if record is None or not is_done(record.status):
        return cfg.resume, None
    new = to_jsonable(config)
    changed = {k for k in set(record.config) | set(new) if record.config.get(k) != new.get(k)}
    if not changed or not changed <= _INPUT_KEYS:
        return cfg.resume, None
    try:
        previous = read_manifest(out_path)
    except MtxError as e:
        log.warning("cannot read the manifest to update (%s); it is made again", e.message)
        previous = []
    log.info("the sources of manifest %r changed; updating it in place", cfg.name)
    return Resume.FORCE, previous


def _llm_config(cfg: UnifyConfig) -> LLMConfig:
    from dataclasses import replace

    return replace(cfg.llm or LLMConfig(), n=cfg.descriptions_per_song)


def _caption_with_llm(state: StateDir, records: list[Record], cfg: UnifyConfig, progress: Progress):
    """LLM captions for records without a human one; nearest-neighbour context from imported CLAP vectors."""
    from .llm_captions import caption_records
    from .sources.audiomuse import NAME as AUDIOMUSE, imported_teachers
    from .store import EmbeddingStore

    vectors = {}
    clap = imported_teachers(state.dataset_dir(AUDIOMUSE)).get("clap")
    wanted = [r.id for r in records if r.dataset == AUDIOMUSE]
    if clap is not None and wanted:
        with EmbeddingStore(clap) as st:
            have = [i for i in wanted if st.has(i)]
            vectors = dict(zip(have, st.get(have))) if have else {}
    return caption_records(state, records, _llm_config(cfg), vectors, progress)


def _check_unique(table: RecordTable) -> None:
    if table.unique_ids():
        return
    seen: set[str] = set()
    for i in table.ids():
        if i in seen:
            raise MtxError(f"duplicate record id {i!r} after prefixing with the source name",
                           hint="a source produced the same id twice; re-download it with --force")
        seen.add(i)


def build_manifest(by_source: dict[str, "Sequence[Record] | RecordTable"], cfg: UnifyConfig,
                   check_audio: bool = True) -> tuple[RecordTable, Filtered]:
    """The in-memory part of unify (prefix -> filter -> sample -> split), for library use and benchmarks."""
    tables = [prefix_ids(t if isinstance(t, RecordTable) else RecordTable.from_records(t), name)
              for name, t in sorted(by_source.items())]
    parsed = RecordTable.concat(tables)
    _check_unique(parsed)
    filtered = filter_records(parsed, cfg.min_duration, cfg.max_duration, check_audio=check_audio)
    return select_and_split(_kept(parsed, filtered.rows), cfg)[0], filtered


def _kept(table: RecordTable, rows: list[int]) -> RecordTable:
    return table if len(rows) == len(table) else table.take(rows)


__all__ = ["UnifyConfig", "UnifyResult", "CompositionRow", "run_unify", "build_manifest"]
