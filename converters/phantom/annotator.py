"""The demo's annotator: the phantom's VIA project re-keyed to the exported, pseudonymized PNGs,
with the images it leaves unannotated for the proposals (demo only).

The phantom's project (:mod:`converters.phantom.writing`) names images by their original SOP
Instance UID; the private ledger and export's provenance records say which PNG each became. No
original identifier survives into what this module returns. Nothing here renders an image, so
the ``phantom-annotations`` stage does not depend on the phantom's anatomy or physics.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from converters.annotations.via import AnnotatedRegion, read_via
from converters.annotations.via_project import ProjectImage, polygon_region, via2_project
from converters.core.errors import InvalidViaError
from converters.core.provenance import record_paths


def exported_pngs(png_dir: str | Path, instances: dict[str, dict]) -> dict[str, tuple[str, int]]:
    """Original SOP Instance UID -> (exported PNG name, PNG size in bytes) (demo only).

    ``instances`` is the private ledger's ``instances`` table (new SOP Instance UID -> the
    original one); the export provenance records (``provenance/*.json``) name each PNG's new
    SOP Instance UID. A malformed record or ledger is an error naming the file.
    """
    exported: dict[str, tuple[str, int]] = {}
    if not isinstance(instances, dict):
        raise InvalidViaError("the ledger's 'instances' is not a mapping")
    for prov in record_paths(png_dir):
        try:
            record = json.loads(prov.read_text(encoding="utf-8"))
            row = instances.get(record["sop_instance_uid"])
            if row is not None:
                exported[row["sop_instance_uid"]] = (record["image"], int(record["png_bytes"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidViaError(f"malformed provenance record or ledger entry "
                                  f"({type(exc).__name__}: {exc})".splitlines()[0],
                                  file=prov) from None
    return exported


def held_out(names: list[str], n: int, key: Callable[[str], str] = str) -> set[str]:
    """The ``n`` exported PNGs the demo's annotator leaves unannotated: the first by the
    SHA-1 of their keys (stable when other images come or go). ``key``: a PNG name's salt-free
    identity (the demo: the phantom's SOP Instance UID, so a site's salt does not change which
    images are held out; :mod:`converters.phantom.readers`)."""
    return set(sorted(names, key=lambda name: hashlib.sha1(key(name).encode()).hexdigest())[:n])


def annotations_for_export(via: str | Path, exported: dict[str, tuple[str, int]], *,
                           keep: Callable[[str], bool] | None = None,
                           redraw: Callable[[str, list[AnnotatedRegion]],
                                            list[AnnotatedRegion]] | None = None) -> dict:
    """The phantom's VIA project (a file) re-keyed to the exported PNGs (demo only).

    ``via`` is the phantom's project (files named ``<original SOPInstanceUID>.png``), read as any
    VIA file is (:func:`converters.annotations.via.read_via`: a malformed one is an error naming
    it); ``exported`` maps an original SOP Instance UID to ``(PNG name, PNG size in bytes)``, as
    the private ledger and the export provenance give it. Images that were not exported
    (quarantined for burned-in text) are left out, as an annotator would never see them. The result
    names only pseudonymized PNGs: no original identifier survives. ``keep`` (a PNG name -> bool)
    selects images (:func:`held_out`). ``redraw`` (a PNG name and its polygon regions -> the
    regions as a reader draws them: :func:`converters.phantom.readers.redraw`) lets a reader
    draw them.
    """
    images = []
    for meta in read_via(via)[1]:
        original_uid = meta.filename.removesuffix(".png")
        if original_uid not in exported:
            continue
        name, size = exported[original_uid]
        if keep is not None and not keep(name):
            continue
        drawn = [r for r in meta.regions if r.shape == "polygon"]
        if redraw is not None:
            drawn = redraw(name, drawn)
        regions = tuple(polygon_region(list(zip(r.xs, r.ys)), **r.attributes) for r in drawn)
        images.append(ProjectImage(name, size, regions))
    images.sort(key=lambda im: im.filename)
    return via2_project(images, name="spinepipe phantom annotations")
