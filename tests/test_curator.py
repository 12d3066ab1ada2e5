"""The data curator's batch loop in DVC itself, against a real Orthanc, on a copy of this
project with the phantom switched off and retrieval on (the README's curator steps):

- the first `dvc repro` fetches the manifest's studies, warns about an accession the PACS does
  not know and goes on, anonymizes and exports, and, with no annotation yet, ends with
  "waiting for annotations in data/annotations/" and exit 0 (nothing trained);
- a row appended to the manifest is fetched by the next `dvc repro` (the manifest lives in
  private/, the stage asks the PACS again every time), and only what is new is fetched."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import yaml

from conftest import copy_project, run_ok


def _accessions(phantom: Path) -> dict[str, int]:
    """Accession number -> instances, of the phantom stored on the PACS."""
    out: dict[str, int] = {}
    for p in (phantom / "dicom").rglob("*.dcm"):
        acc = str(pydicom.dcmread(p, stop_before_pixels=True).AccessionNumber)
        out[acc] = out.get(acc, 0) + 1
    return out


def test_a_new_batch_is_fetched_and_the_pipeline_waits_for_annotations(pacs, small_phantom,
                                                                        tmp_path):
    accessions = _accessions(small_phantom)
    first, second = sorted(accessions)[:2]
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["phantom"]["enabled"] = False
    params["retrieve"].update(enabled=True, port=pacs.dicom_port, move_port=pacs.move_port,
                              manifest="private/manifest.csv", timeout_s=5.0)
    params["anonymize"]["ocr"] = False
    params["train"]["models"] = ["unet"]              # the graph, small: one model
    params["propose"]["model"] = params["to_seg"]["model"] = "unet"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "private").mkdir()
    manifest = project / "private" / "manifest.csv"
    manifest.write_text(f"AccessionNumber\n{first}\nNOPE404\n")
    run_ok("git", "init", "-q", cwd=project)
    run_ok("git", "add", "-A", cwd=project)
    run_ok("git", "commit", "-qm", "project", cwd=project)

    log = run_ok("dvc", "repro", cwd=project, stderr=True)
    assert "not found on the PACS: AccessionNumber=NOPE404" in log
    assert "warning: 1 manifest row(s) not found on the PACS" in log
    assert "phantom-annotations: skipped (phantom.enabled is false)" in log
    assert "convert: waiting for annotations in data/annotations/" in log
    assert "report: waiting for annotations" in log
    pngs = sorted((project / "data" / "interim" / "png").glob("*.png"))
    assert len(pngs) == accessions[first]                      # the first study, exported
    run = json.loads((project / "models" / "unet" / "fold0" / "metrics.json").read_text())
    assert run["best"] is None and run["waiting_for_annotations"]
    assert not list((project / "models").rglob("*.pth"))       # nothing trained
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["waiting_for_annotations"]
    assert "Waiting for annotations" in (project / "reports" / "report.html").read_text()
    assert list((project / "data" / "raw" / "dicom").iterdir()) == []  # no demo image

    with manifest.open("a") as fh:                             # the next batch
        fh.write(f"{second}\n")
    log = run_ok("dvc", "repro", cwd=project, stderr=True)
    assert f"{accessions[second]} instances fetched" in log    # only the new study's
    pngs = sorted((project / "data" / "interim" / "png").glob("*.png"))
    assert len(pngs) == accessions[first] + accessions[second]
    status = json.loads(run_ok("dvc", "status", "--json", cwd=project))
    assert set(status) <= {"retrieve"}                         # asked again next time only

    # back to the phantom: the PACS batch stays in data/raw/pacs, left out of what follows
    params["retrieve"]["enabled"] = False
    params["phantom"].update(enabled=True, n=4, height=240, width=96, burned_in_share=0.0)
    params["annotator"]["holdout"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = run_ok("dvc", "repro", "export", cwd=project, stderr=True)
    fetched = len(list((project / "data" / "raw" / "pacs").rglob("*.dcm")))
    assert fetched == accessions[first] + accessions[second]   # the real batch kept
    assert "anonymize: left out data/raw/pacs: its source is switched off" in log
    assert f"removed {fetched} output(s) whose input is gone from data/raw/pacs" in log
    pngs = sorted((project / "data" / "interim" / "png").glob("*.png"))
    assert len(pngs) == 4                                      # the phantom's only
