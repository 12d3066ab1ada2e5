"""DICOM de-identification of a whole archive (``spinepipe anonymize``; DESIGN.md, convention 13).

An allowlist built from PS3.15 Annex E, in four modules:

- :mod:`converters.dicom.deid_table`: the action table (``deid_actions.tsv``), its options and
  value checks: what is kept, checked, replaced, removed;
- :mod:`converters.dicom.deid_engine`: the table applied to every element of one object, in
  place, UIDs remapped, dates shifted, names pseudonymised, each element's action audited;
- :mod:`converters.dicom.deid_pixels`: pixel data: complete and within budget before anything
  is decoded, text markers removed from encapsulated frames, OCR's planes, blanked regions;
- this module: the walk over the input folders, the writes, the incremental state, the reports.

Output layout (:func:`anonymize_tree`), under the output folder, every name checked
(:mod:`converters.core.paths`) before it becomes a path:
``<pseudonym>/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm``,
``audit/<new SOPInstanceUID>.json`` (the action of every element, no original value) and
``report.json`` (counts, the table's version, the options; no input path). Each object is written
by a worker under a hidden temporary name and moved into place by the parent, which refuses a
second input with the same SOP Instance UID and records the identity in the ledger first.

The secret salt, the ledger (original identifiers -> pseudonyms), the incremental state and the
per-input report (input paths can carry identifiers) live only in the private folder
(:mod:`converters.dicom.ledger`).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.errors import InvalidDicomError as _PydicomInvalid

from converters.dicom.read import read_dicom, transfer_syntax
from converters.core.errors import (InvalidLedgerError, MissingInputError, SpinepipeError,
                                    raised_by_a_parser)
from converters.core.incremental import IncrementalState, file_signature
from converters.core.files import (TEMP_MARK, atomic_path, move_into_place, prepare_output,
                                   remove_output, remove_stale_temps, write_json)
from converters.dicom.deid_engine import Outcome, anonymize_dataset
from converters.dicom.deid_table import TABLE_VERSION, AnonymizeConfig
# patient_pseudonym and PSEUDONYM_PREFIX are re-exported: callers know them from here
from converters.dicom.ledger import (  # noqa: F401
    LEDGER_FILE, LEDGER_VERSION, PSEUDONYM_PREFIX, load_ledger, patient_pseudonym,
    read_private_json, record_instance, write_private_json)
from converters.core.parallel import map_jobs
from converters.core.paths import check_name, check_uid, confined
from converters.core.records import source_switched_off


# --------------------------------------------------------------------------------------------
# the table


# --------------------------------------------------------------------------------------------
# pseudonyms


# --------------------------------------------------------------------------------------------
# the engine


# --------------------------------------------------------------------------------------------
# text inside encapsulated pixel data


# --------------------------------------------------------------------------------------------
# one object


# --------------------------------------------------------------------------------------------
# a whole archive


@dataclass
class TreeReport:
    """Counts for the public report, and per-input details for the private one."""

    counts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)   # output relpath -> public facts
    private_rows: dict[str, dict] = field(default_factory=dict)  # input key -> details
    removed: dict[str, int] = field(default_factory=dict)  # input folder -> outputs removed
    switched_off: list[str] = field(default_factory=list)  # input folders left out

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def failed_inputs(self) -> list[str]:
        return sorted(k for k, r in self.private_rows.items() if r["status"] == "failed")

    def detail_lines(self, *, failures_only: bool = False) -> list[str]:
        """One line per input handled now that was not anonymized, or anonymized with a note
        (for the terminal only: input paths may carry identifiers)."""
        shown = ("failed",) if failures_only else ("failed", "quarantined", "skipped")
        lines = []
        for key, row in sorted(self.private_rows.items()):
            if row.get("reused"):
                continue
            if row["status"] in shown:
                lines.append(f"  {row['status']}: {key}: {row['reason']}")
            elif row.get("note") and not failures_only:
                lines.append(f"  note: {key}: {row['note']}")
        return lines


def _part_name(out_rel: str, rel: str) -> str:
    """Where a worker writes an object before the parent moves it to ``out_rel``: hidden and
    marked temporary, so a run killed in between leaves nothing a re-run keeps."""
    folder, _, name = out_rel.rpartition("/")
    return f"{folder}/.{name}.{hashlib.sha1(rel.encode()).hexdigest()[:12]}{TEMP_MARK}"


#: the object anonymized last in this process, let go only right after the next one has been
#: read: glibc's allocator then reuses its memory for what follows instead of handing it back
#: to the system and faulting it in again (pydicom's read of a 6 MB object: 2.6 ms freed first,
#: 1.3 ms freed after; a 30-object command 10-18 % faster, ``benchmarks/bench_anonymize.py``;
#: let go after the write instead, 8 % with one worker, nothing with two). Only an object written
#: anonymized stays held (one that failed or was quarantined, still identifying, is let go when
#: its call ends) and only one holding at most :data:`HOLD_AT_MOST` bytes of pixels in memory
#: (its pixel data, inflated, and any decoded array pydicom keeps): glibc maps larger blocks
#: afresh anyway, and holding one would double the memory a worker needs
_LAST_READ: list[Dataset] = []
HOLD_AT_MOST = 32 << 20


def _hold(ds: Dataset | None) -> None:
    """Hold ``ds`` as :data:`_LAST_READ` (None: hold nothing), letting the previous one go."""
    if ds is not None:
        decoded = getattr(ds, "_pixel_array", None)      # pydicom's cache of ds.pixel_array
        resident = len(ds.get("PixelData") or b"") + int(getattr(decoded, "nbytes", 0))
        ds = ds if resident <= HOLD_AT_MOST else None
    _LAST_READ[:] = [] if ds is None else [ds]


def _anonymize_file(args: tuple[str, str, str, bytes, AnonymizeConfig]) -> tuple[str, Outcome, str]:
    src, rel, out_root, salt, options = args
    written = None
    try:
        ds = read_dicom(src)
        _LAST_READ[:] = [ds]      # the one held before goes now, after this read (no longer
        # than ``ds`` itself lives, unless written: see the ``finally``)
        outcome = anonymize_dataset(ds, salt, options, file=rel)
        if outcome.status != "anonymized":
            return rel, outcome, ""
        parts = (check_name(outcome.patient_pseudonym, "pseudonym", file=rel),
                 check_uid(outcome.new_study_uid, "Study Instance UID", file=rel,
                           tag="(0020,000D)"),
                 check_uid(outcome.new_sop_uid, "SOP Instance UID", file=rel,
                           tag="(0008,0018)") + ".dcm")
        out_rel = "/".join(parts)
        if getattr(ds, "preamble", None) is not None:
            ds.preamble = b"\0" * 128  # free text in some archives (names, MRNs)
        _decode_if_reencoded(ds)
        # written under a name of its own: two inputs may carry the same SOP Instance UID, and
        # the parent decides which one becomes out_rel (see _part_name)
        with atomic_path(confined(out_root, _part_name(out_rel, rel), file=rel)) as tmp:
            ds.save_as(tmp, enforce_file_format=hasattr(ds, "file_meta") and bool(ds.file_meta))
        written = ds
        return rel, outcome, out_rel
    except SpinepipeError as exc:
        return rel, Outcome("failed", str(exc)), ""
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OSError,
            OverflowError, EOFError, NotImplementedError, struct.error, BytesLengthException,
            _PydicomInvalid) as exc:
        # a parser's error on hostile bytes, or the file system's: the file's failure, retried
        # on the next run; anything else raised these types in spinepipe's code: a bug
        if not (raised_by_a_parser(exc) or isinstance(exc, OSError)):
            raise
        # malformed values pydicom (or a decoder) chokes on: report, go on
        return rel, Outcome("failed", f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0]), ""
    finally:
        _hold(written)


def _anonymize_files(jobs: list, workers: int, progress) -> list[tuple[str, Outcome, str]]:
    """:func:`_anonymize_file` over the jobs; nothing held after (:data:`_LAST_READ`)."""
    try:
        return map_jobs(_anonymize_file, jobs, workers=workers, progress=progress)
    finally:
        _LAST_READ.clear()


def _decode_if_reencoded(ds: Dataset) -> None:
    """Elements read in implicit VR from a file whose transfer syntax says explicit VR are
    decoded (pydicom writes raw elements as they came, and has no VR to write for them)."""
    ts = transfer_syntax(ds)
    if ts is not None and not ts.is_implicit_VR and \
            any(getattr(ds.get_item(tag), "VR", "") is None for tag in ds.keys()):
        for _ in ds.iterall():
            pass


#: the incremental state's rows (2: a duplicate is marked by ``duplicate_of``, not its reason)
STATE_VERSION = 2


def _options_key(options: AnonymizeConfig) -> str:
    """What an output depends on besides its input: the options, the action table's version
    and the identity keys' (a new table or ledger version redoes every object once)."""
    facts = {**asdict(options), "table": TABLE_VERSION, "ledger": LEDGER_VERSION,
             "state": STATE_VERSION}
    return hashlib.sha1(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _cacheable(row: dict) -> bool:
    """Failures (and duplicates, whose first copy may go away) are retried on every run."""
    return row["status"] in ("anonymized", "quarantined", "skipped") and \
        not row.get("duplicate_of")


def check_input_folders(folders: list[str | Path]) -> None:
    """:class:`MissingInputError` naming the first input folder that does not exist."""
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MissingInputError("input folder not found", file=folder)


def _sources(inputs: list[Path], off: list[Path]) -> dict[str, tuple[str, str, Path]]:
    """Input key -> (folder, path relative to it, path) of every file under ``inputs``, but
    those in ``off`` (switched-off sources: their files stay, their outputs are pruned)."""
    sources: dict[str, tuple[str, str, Path]] = {}
    for d in inputs:
        folder = str(d.resolve())
        if d in off:
            continue
        for p in sorted(d.rglob("*")):
            if p.is_file():
                rel = str(p.relative_to(d))
                sources[f"{d.name}/{rel}" if len(inputs) > 1 else rel] = (folder, rel, p)
    return sources


def _settle(key: str, outcome: Outcome, out_rel: str, output_dir: Path, owner: dict,
            ledger: dict) -> tuple[Outcome, str, str]:
    """Move one written object into place, or refuse it (a duplicate SOP Instance UID, an
    identity the ledger refuses); record it in the ledger. Returns (outcome, output, note)."""
    if not out_rel:
        return outcome, out_rel, ""
    part = output_dir / _part_name(out_rel, key)
    if out_rel in owner and owner[out_rel] != key:
        remove_output(output_dir, _part_name(out_rel, key))
        # an earlier input (in path order) has this SOP Instance UID
        return Outcome("skipped", f"duplicate SOP Instance UID: same object as "
                       f"{owner[out_rel]}", duplicate_of=owner[out_rel]), "", ""
    try:
        note = record_instance(ledger, outcome.ledger, key)
    except InvalidLedgerError as exc:
        remove_output(output_dir, _part_name(out_rel, key))
        return Outcome("failed", str(exc)), "", ""
    owner[out_rel] = key
    move_into_place(part, output_dir / out_rel)
    write_json(output_dir / "audit" / f"{outcome.new_sop_uid}.json",
               {"output": out_rel, "action_table": TABLE_VERSION, **outcome.audit},
               indent=None)
    return outcome, out_rel, note


def anonymize_tree(input_dir: str | Path | list, output_dir: str | Path, private: Path,
                   salt: bytes, options: AnonymizeConfig, *, workers: int = 1,
                   progress=None) -> TreeReport:
    """Anonymize every file under ``input_dir`` (recursively; a list of folders is walked in
    turn, their files keyed ``<folder name>/<path>``) into ``output_dir``.

    Output layout: ``<pseudonym>/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm`` plus
    ``audit/<new SOPInstanceUID>.json`` (the action of every element, no original values).

    Incremental and additive (:mod:`converters.core.incremental`; the state lives in the private
    folder, one file per output folder, since input paths can carry identifiers): an input whose
    size, mtime and options (and the table's version) are unchanged, and whose output still exists,
    is not processed again; failures are never cached; a file that disappeared from an input folder
    walked now has its own earlier output (and audit record) removed, unless another input still
    produces it. An input folder whose source says it is switched off
    (:func:`converters.core.records.source_switched_off`: ``retrieve.enabled`` off) is not
    read, and its outputs go as if its files had gone; its files stay. Input folders not given
    in this run (other batches) are left alone, and so are their outputs. Inputs are only read. An object whose identity the ledger refuses
    (:func:`converters.dicom.ledger.record_instance`) fails, and nothing of it is kept.
    """
    inputs = [Path(d) for d in input_dir] if isinstance(input_dir, list) else [Path(input_dir)]
    check_input_folders(inputs)
    if options.ocr:
        from converters.dicom.burned_in import check_ocr_available

        check_ocr_available()  # one line before the first file, not one per file
    output_dir = prepare_output(output_dir)
    remove_stale_temps(output_dir)
    out_id = hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]
    state = IncrementalState(private / f"anonymize_state.{out_id}.json",
                             loader=lambda p: read_private_json(p, None),
                             writer=write_private_json)
    opt_key = _options_key(options)
    off = [d for d in inputs if source_switched_off(d)]
    sources = _sources(inputs, off)
    todo, report = [], TreeReport()
    for key, (folder, rel, p) in sources.items():
        prev = state.up_to_date(folder, rel, file_signature(p, opt_key), output_dir)
        if prev and _cacheable(prev["row"]):
            report.private_rows[key] = {**prev["row"], "reused": True}
            continue
        state.forget(folder, rel)  # redone now (or failing again): claims nothing meanwhile
        todo.append((str(p), key, str(output_dir), salt, options))
    ledger = load_ledger(private)
    results = _anonymize_files(todo, workers, progress)
    _remove_gone(inputs, off, sources, state, output_dir, report)
    owner = {o: f"{Path(g).name}:{k}" for g, entries in state.data["groups"].items()
             for k, e in entries.items() for o in e["outputs"]}
    for key, outcome, out_rel in sorted(results, key=lambda r: r[0]):
        folder, rel, p = sources[key]
        outcome, out_rel, note = _settle(key, outcome, out_rel, output_dir, owner, ledger)
        row = {"status": outcome.status, "reason": outcome.reason, "output": out_rel,
               **({"note": note} if note else {}),
               **({"duplicate_of": outcome.duplicate_of} if outcome.duplicate_of else {})}
        report.private_rows[key] = row
        if outcome.status != "failed":
            state.record(folder, rel, file_signature(p, opt_key),
                         [out_rel] if out_rel else [], row=row)
    _write_reports(report, state, ledger, private, output_dir, options)
    return report


def _remove_gone(inputs: list[Path], off: list[Path], sources: dict, state: IncrementalState,
                 output_dir: Path, report: TreeReport) -> None:
    """Files gone from an input folder walked now (an emptied or switched-off folder too):
    their own outputs and audit records go; other folders' outputs stay."""
    for d in inputs:
        folder = str(d.resolve())
        for out_rel in state.prune(folder, [rel for f, rel, _ in sources.values() if f == folder]):
            if remove_output(output_dir, out_rel):
                report.removed[str(d)] = report.removed.get(str(d), 0) + 1
            remove_output(output_dir, f"audit/{Path(out_rel).stem}.json")
        if d in off and any(d.iterdir()):  # an empty one: nothing to say
            report.switched_off.append(str(d))


def _write_reports(report: TreeReport, state: IncrementalState, ledger: dict, private: Path,
                   output_dir: Path, options: AnonymizeConfig) -> None:
    for row in report.private_rows.values():
        report.counts[row["status"]] = report.counts.get(row["status"], 0) + 1
    for out_rel in state.outputs():
        report.outputs[out_rel] = {"status": "anonymized"}
    write_private_json(private / LEDGER_FILE, ledger)
    state.save()
    write_private_json(private / "anonymize_report.json", report.private_rows)
    write_json(output_dir / "report.json", {
        "counts": report.counts, "action_table": TABLE_VERSION,
        "options": {k: v for k, v in options.__dict__.items()},
        "outputs": sorted(report.outputs),
        "not_anonymized": "see the private folder's anonymize_report.json (input paths "
                          "may contain identifiers)"})
