"""The way back to the PACS: C-STORE of spinepipe's results (``spinepipe store``), resumable:
a state file records per PACS what was stored with which content, so a re-run sends only
what is new or changed. The association: :mod:`converters.dicom.pacs`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset

from converters.dicom.read import read_dicom, transfer_syntax
from converters.core.errors import InvalidDicomError
from converters.core.files import prepare_output, write_json
from converters.core.records import NotRegularFile, open_input
from converters.dicom.pacs import Pacs, RetrieveConfig, explain_status


@dataclass
class StoreReport:
    """What ``store`` did, per instance: ``stored`` now, ``already`` stored by an earlier run
    with the same content (the state file says so), ``failed`` (with the PACS's status in
    words, or the reason). A ``stored`` instance that an earlier run had stored with other
    content has the reason ``changed since the last store``."""

    instances: list[dict] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(r["outcome"] == outcome for r in self.instances)


#: C-STORE statuses that mean "stored" (success, and the warnings "coerced", "elements
#: discarded", "does not match SOP class")
STORE_OK = (0x0000, 0xB000, 0xB006, 0xB007)


def _store_state(state_path: Path, where: str) -> tuple[dict, dict[str, str]]:
    """The whole state file and, for the PACS ``where``, SOP Instance UID -> sha256 of the
    file as it was stored. The state file is input too: anything malformed counts as not
    stored (an old list of UIDs without hashes: sent again, once)."""
    try:
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    except (ValueError, OSError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    sent = state.get(where)
    if isinstance(sent, dict):
        return state, {k: v for k, v in sent.items() if isinstance(k, str) and isinstance(v, str)}
    return state, {}


def _read_for_store(path: Path) -> tuple[Dataset, str]:
    """The dataset of ``path`` and the sha256 of its bytes, from one read (what is hashed is
    what is sent)."""
    try:
        with open_input(path) as fh:
            data = fh.read()
    except NotRegularFile as exc:
        raise InvalidDicomError(exc.strerror, file=path) from None
    except OSError as exc:
        raise InvalidDicomError(f"cannot be read ({exc.strerror})", file=path) from None
    ds = read_dicom(data, name=path)
    if transfer_syntax(ds, path) is None:
        raise InvalidDicomError("no file meta: not a Part 10 file", file=path)
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        if not str(ds.get(keyword) or ""):
            raise InvalidDicomError(f"no {keyword}", file=path, tag=tag)
    return ds, hashlib.sha256(data).hexdigest()


def store(cfg: RetrieveConfig, files: list[Path], state_path: str | Path,
          progress: Callable[[int, int], None] | None = None) -> StoreReport:
    """C-STORE ``files`` (DICOM Part 10) to the PACS of ``cfg`` over one association (TLS
    when configured). Resumable: ``state_path`` (JSON) records, per PACS address, the SOP
    Instance UIDs it accepted with the sha256 of each file's bytes; a re-run sends the files
    not recorded and those whose content changed since (a SEG rewritten under the same UID).
    A failure is reported and never recorded, so the next run tries again. Whether a PACS
    replaces an instance it already holds under that UID is its policy (Orthanc:
    ``OverwriteInstances``)."""
    state_path = Path(state_path)
    prepare_output(state_path.parent)  # the resume state (store writes nothing else)
    where = f"{cfg.called_aet}@{cfg.host}:{cfg.port}"
    state, sent = _store_state(state_path, where)
    report = StoreReport()
    todo = []
    for path in files:
        try:
            ds, digest = _read_for_store(path)
        except InvalidDicomError as exc:
            report.instances.append({"file": str(path), "sop_instance_uid": "",
                                     "outcome": "failed", "reason": exc.message})
            continue
        sop = str(ds.SOPInstanceUID)
        if sent.get(sop) == digest:
            report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                     "outcome": "already", "reason": ""})
            continue
        todo.append((path, ds, digest, "changed since the last store" if sop in sent else ""))
    if todo:
        _send(cfg, todo, state, where, sent, state_path, report, progress)
    return report


def _send(cfg: RetrieveConfig, todo: list, state: dict, where: str, sent: dict[str, str],
          state_path: Path, report: StoreReport, progress) -> None:
    """C-STORE ``todo`` over one association, recording each success in the state file."""
    pacs = Pacs(cfg)
    ae = pacs.new_ae()
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds, _, _ in todo}
    for sop_class, ts in sorted(contexts)[:128]:
        ae.add_requested_context(sop_class, [ts])
    assoc = pacs.associate(ae)
    try:
        for n, (path, ds, digest, note) in enumerate(todo, 1):
            sop = str(ds.SOPInstanceUID)
            status = assoc.send_c_store(ds) if assoc.is_established else None
            code = getattr(status, "Status", None) if status else None
            if code in STORE_OK:
                sent[sop] = digest
                state[where] = dict(sorted(sent.items()))
                write_json(state_path, state)
                report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                         "outcome": "stored", "reason": note})
            else:
                why = (explain_status("C-STORE", status) if code is not None else
                       "no answer (association lost or no accepted presentation context)")
                report.instances.append({"file": str(path), "sop_instance_uid": sop,
                                         "outcome": "failed", "reason": why})
            if progress:
                progress(n, len(todo))
    finally:
        if assoc.is_established:
            assoc.release()
