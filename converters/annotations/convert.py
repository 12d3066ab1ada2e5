"""VIA annotations -> COCO instances, class masks, overlap maps, a per-image table and QA.

Input: one or more VIA exports (any format :func:`converters.annotations.via.read_via` reads) and
the folder of the images they describe. Coordinates and rasterization follow
:mod:`converters.annotations.coco` (COCO convention, pixel centres at +0.5; masks rasterized by
pycocotools).

Validation and repair, each problem recorded with file, image and region index:

========================  =================================================  ========
problem                   what happens                                       severity
========================  =================================================  ========
repeated_points           consecutive duplicate vertices removed             warning
too_few_points            fewer than 3 distinct vertices: region dropped     error
outside_image             vertices clipped to the image                      warning
self_intersection         shapely ``make_valid``, largest part kept          warning
                          (no area left, or more than 100 self-crossings:
                          region dropped)                                    error
unknown_class             class value not in the mapping (or never set):
                          region dropped                                     error
ignored_shape             point / line, or rect / ellipse / circle without
                          ``shapes_to_polygons``: region dropped            error
missing_image             annotated in VIA, not on disk: image skipped       error
unannotated_image         on disk, not in any VIA file                       warning
proposal_record           the ``spinepipe_proposal`` file attribute was      warning
                          altered: that image's corrections not measured
size_mismatch             VIA's recorded file size differs from the file     warning
duplicate_image           the same image annotated again by the same reader:
                          later copy ignored                                 error
not_settled               an adjudicated image whose ``settled`` file        warning
                          attribute is not ``yes``: the readers' polygons
                          stay its ground truth
not_adjudicated           a settled adjudication still holding several       error
                          readers' polygons (``annotator`` values) or two
                          outlines of one vertebra: ignored, the readers'
                          polygons stay its ground truth
no_consensus              a structure some reader drew is not in the         warning
                          consensus (drawn by fewer than half the readers,
                          or outlines that do not overlap)
missing_sacrum            no sacrum in an image                              warning
lumbar_count              not exactly five lumbar vertebrae (more than       warning
                          five: a transitional spine, no lumbar levels
                          assigned)
========================  =================================================  ========

``error`` marks a problem that loses an annotation: :func:`validate` (``spinepipe validate``,
the annotators' check before handing a batch over) fails on it; convert still converts the
rest and reports it. With ``strict`` every problem stops the conversion: nothing is written
but the full problem list (``<output>.problems.json`` beside the output folder, or the path
given), and the error shows the counts per kind and the first locations.

Never an empty success: a batch whose regions all get dropped (every class unknown, say) is an
error, not a dataset of zero instances. The class attribute is found when it is not called
``convert.class_attribute`` (:func:`converters.annotations.regions.detect_class_attribute`); which
one was used is in ``report.json``.

Readers (:mod:`converters.annotations.readers`): every VIA file belongs to a reader (its
sub-folder of the input; ``default`` for files given directly). Each reader's regions are
validated and levelled on their own; an image's ground truth is its only reader's polygons, a
settled adjudication, ``convert.reference``'s reader, or else the readers' consensus
(:mod:`converters.annotations.consensus`, built over the cores). COCO annotations carry their
``annotator`` (``consensus``: no VIA file, region -1); ``images.csv`` the ``readers`` and the
``ground_truth``; QA overlays every reader's outline under the ground truth.

Levels: each vertebra gets ``L1``..``L5`` / ``S1`` bottom-up from the sacrum
(:mod:`converters.spine.levels`). The steps, in :func:`convert`: read every VIA file
(:mod:`converters.annotations.via`), validate and repair each region
(:mod:`converters.annotations.regions`), assign levels, build the COCO rows and the table,
rasterize what changed and draw the QA pictures (:mod:`converters.annotations.masks`, with
:mod:`converters.annotations.coco` and :mod:`converters.annotations.qa`), write.

Outputs under the output folder:

- ``coco.json``: images (COCO's keys plus ``n_implants``, the implant regions the annotator
  drew, kept or not: the report's subgroups), annotations (polygon, area of the polygon, bbox,
  iscrowd 0,
  ``level``, ``via_file``, ``via_region``, ``annotator``), categories (lumbar 1, sacrum 2, then kept implant
  classes);
- ``masks/<stem>.png``: uint8, 0 background, 1 lumbar, 2 sacrum (implant classes, when kept,
  3..; classes in ``ignore_classes`` 255); overlapping classes: larger value wins;
- ``overlaps/<stem>.png``: uint8, 1 where two or more vertebra instances overlap, else 0;
- ``images.csv``: per image: patient, size, instance counts, implants, overlap area and the
  overlapping level pairs (used by the split and the composite recognition rate), the readers
  and whose polygons are the ground truth, ``content`` (the first 16 hex digits of the image
  file's SHA-1: the split orders images by it, so that the split does not depend on the
  pseudonyms, which depend on the site's salt);
- ``qa/<stem>.png`` (polygons and levels over the image, the endplates and the lordosis
  angle in yellow, problems in red) and
  ``qa/contact_NNN.png`` contact sheets;
- ``measures.csv``: per image, the clinical measures of the annotated polygons
  (:mod:`converters.spine.measures`: lordosis, segmental angles, disc and body heights in pixels
  and, with the pixel spacing from export's provenance, millimetres, slips and Meyerding grades;
  empty where not measurable, the reasons in ``not_measurable``); with ``measures.refine`` the
  endplates are refined on the image first (:mod:`converters.spine.refine`; ``refined`` 1 and
  the ``confidence``);
- ``report.json``: every problem, and a count per kind;
- ``correction.csv``: for images that came back from ``spinepipe propose`` (their file
  attribute ``spinepipe_proposal`` records what the model proposed), per image and region what the
  annotator did: ``unchanged``, ``edited`` (with the IoU of the proposed and the final polygon),
  ``added``, ``deleted`` (:func:`converters.annotations.proposals.corrections`); only the header
  when no image was proposed.

Incremental and additive (:mod:`converters.core.incremental`, grouped by VIA file): per image, a
hash of its regions, its file and the configuration; unchanged images are not re-rasterized. An
image no longer in a VIA file given now loses its own masks, overlap map and overlay; images of VIA
files not given in this run keep theirs (they are not in ``coco.json``).

Nothing half-written: bad input (an unreadable VIA file, ``strict`` problems, an image that
does not decode or whose header claims more than
:data:`~converters.dicom.pixels.MAX_PIXELS` pixels) stops the
conversion with one error before any output moves into place; rendered files are written
under temporary names and renamed only when every image succeeded.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from converters.annotations import qa
from converters.annotations.coco import IGNORE, bbox, categories, flat
from converters.annotations.masks import ImageJob, render_changed, image_size
from converters.core.errors import (InvalidImageError, InvalidViaError, MissingInputError,
                                    OutputFolderError)
from converters.core.incremental import IncrementalState
from converters.core.parallel import map_jobs
from converters.core.files import (prepare_output, remove_output, remove_stale_temps, write_json,
                                   write_text)
from converters.spine.levels import LUMBAR, assign_levels
from converters.core.provenance import patient_of
from converters.spine.measures import image_measures, measures_csv
from converters.spine.refine import MeasuresConfig
from converters.annotations.proposals import (CORRECTION_FIELDS, PROPOSAL_ATTRIBUTE, corrections,
                                              read_proposal)
from converters.core.provenance import pixel_spacing, read_record
from converters.annotations.regions import (Outline, Problem, RegionRules, detect_class_attribute,
                                            validate_region)
from converters.annotations.via import MAX_POINTS, AnnotatedImage, read_via
from converters.annotations.consensus import consensus_with_gaps
from converters.annotations.readers import (ADJUDICATED, CONSENSUS, DEFAULT_READER, SETTLED,
                                            ReaderFile, check_reference, ground_truth_reader)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# larger images are refused: MAX_PIXELS (converters.dicom.pixels, export's default too); the
# study's are 3.2 megapixels, the largest radiographs ~19
STATE_FILE = ".convert_state.json"


@dataclass(frozen=True)
class ConvertConfig:
    """params.yaml section ``convert``."""

    class_attribute: str = "class"
    # region attribute value -> class name (values not listed are unknown_class problems)
    class_map: dict[str, str] = field(default_factory=lambda: {
        "lumbar": "lumbar", "sacrum": "sacrum", "cage": "cage", "screw": "screw", "rod": "rod"})
    classes: list[str] = field(default_factory=lambda: ["lumbar", "sacrum"])
    implant_classes: list[str] = field(default_factory=lambda: ["cage", "screw", "rod"])
    keep_implants: bool = False      # as extra COCO categories / mask values (off: the study)
    ignore_classes: list[str] = field(default_factory=list)  # drawn as 255 in masks
    shapes_to_polygons: bool = False  # rect / ellipse / circle become polygons
    ellipse_points: int = field(default=32, metadata={"min": 3, "max": MAX_POINTS})
    expected_lumbar: int = field(default=5, metadata={"min": 0})
    #: an image's ground truth when several readers read it: ``consensus`` or a reader's name
    #: (:mod:`converters.annotations.readers`; an ``adjudicated`` reading always wins)
    reference: str = "consensus"
    strict: bool = False
    qa: bool = True
    qa_max_height: int = field(default=800, metadata={"min": 16})
    contact_sheet_size: int = field(default=24, metadata={"min": 1})

    def region_rules(self) -> RegionRules:
        return RegionRules(self.class_attribute, self.class_map, self.implant_classes,
                           self.keep_implants, self.shapes_to_polygons, self.ellipse_points)


# --------------------------------------------------------------------------------------------
# per image


# --------------------------------------------------------------------------------------------
# the whole conversion


@dataclass
class ConvertReport:
    problems: list[Problem] = field(default_factory=list)
    images: int = 0
    annotations: int = 0
    regions: int = 0
    rendered: int = 0
    #: what annotators did to model proposals: status -> regions (see ``correction.csv``)
    corrections: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    class_attribute: str = "class"
    class_attribute_detected: bool = False
    removed: int = 0      # images whose masks went: no longer annotated in a VIA file given

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def locations(self, n: int = 5) -> list[str]:
        """The first ``n`` problems, one line each, and how many more there are."""
        lines = [f"  {p.line()}" for p in self.problems[:n]]
        if len(self.problems) > n:
            lines.append(f"  ... and {len(self.problems) - n} more")
        return lines

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return dict(sorted(out.items()))


@dataclass
class ConvertPlan:
    """What the validation step decided: the jobs to render and the tables to write."""

    jobs: list[ImageJob] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)      # the VIA file of each job
    coco_images: list[dict] = field(default_factory=list)
    coco_anns: list[dict] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    mask_values: dict[str, int] = field(default_factory=dict)
    corrections: list[dict] = field(default_factory=list)   # rows of correction.csv
    measures: list[dict] = field(default_factory=list)      # rows of measures.csv
    #: image -> reader -> outlines, for the images two or more readers read (every image
    #: with ``readers_only``)
    readers: dict[str, dict[str, list[Outline]]] = field(default_factory=dict)
    #: image -> the consensus outlines, for the images whose ground truth is the consensus
    consensus: dict[str, list[Outline]] = field(default_factory=dict)


def _reader_files(via_files: Sequence[ReaderFile | str | Path]) -> list[ReaderFile]:
    """Files given as paths belong to the ``default`` reader."""
    return [f if isinstance(f, ReaderFile) else ReaderFile(DEFAULT_READER, Path(f))
            for f in via_files]


def _read_inputs(files: list[ReaderFile],
                 report: ConvertReport) -> dict[str, dict[str, AnnotatedImage]]:
    """Every VIA file read: image -> reader -> its annotation. An image one reader annotated
    twice keeps the first copy; readers who recorded different sizes of one image are an
    error."""
    merged: dict[str, dict[str, AnnotatedImage]] = {}
    for rf in files:
        fmt, images = read_via(rf.path)
        report.formats[str(rf.path)] = fmt
        for img in images:
            if rf.reader == ADJUDICATED and img.file_attributes.get(SETTLED, "") != "yes":
                report.problems.append(Problem(
                    "not_settled", f"adjudication not settled (file attribute '{SETTLED}' is "
                    "not 'yes'): the readers' polygons stay in charge", str(rf.path),
                    img.filename))
                continue
            readers = merged.setdefault(img.filename, {})
            if rf.reader in readers:
                report.problems.append(Problem(
                    "duplicate_image", f"also annotated in {readers[rf.reader].source} by the "
                    f"same reader ({rf.reader}); this copy is ignored", str(rf.path),
                    img.filename))
                continue
            other = next((o for o in readers.values() if o.size >= 0 and img.size >= 0
                          and o.size != img.size), None)
            if other is not None:
                raise InvalidViaError(
                    f"reader {rf.reader} recorded {img.size} bytes, {other.source} "
                    f"{other.size}: not the same image", file=rf.path, image=img.filename)
            readers[rf.reader] = img
    return merged


def _mask_values(cfg: ConvertConfig) -> dict[str, int]:
    mask_values = {c: i + 1 for i, c in enumerate(cfg.classes)}
    if cfg.keep_implants:
        for c in cfg.implant_classes:
            mask_values.setdefault(c, len(mask_values) + 1)
    for c in cfg.ignore_classes:
        mask_values[c] = IGNORE
    return mask_values


def _plan(merged: dict[str, dict[str, AnnotatedImage]], on_disk: dict[str, Path],
          output: Path, cfg: ConvertConfig, report: ConvertReport,
          measures: MeasuresConfig | None = None, workers: int = 1,
          readers_only: bool = False) -> ConvertPlan:
    """Validate every annotated image on disk: each reader's instances and levels, the ground
    truth (:mod:`converters.annotations.readers`), COCO rows, the table; with
    ``measures.refine``, the measures' endplates refined on the image. ``readers_only``: the
    readers' outlines alone (``plan.readers``)."""
    refine = measures if measures is not None and measures.refine else None
    plan = ConvertPlan(mask_values=_mask_values(cfg))
    rules = dataclasses.replace(cfg.region_rules(), class_attribute=report.class_attribute)
    for name in sorted(set(on_disk) - set(merged)):
        report.problems.append(Problem("unannotated_image", "image on disk but in no VIA file",
                                       "", name))
    earlier: dict[str, list[str]] = {}  # by image: one pass, not one per image
    for p in report.problems:
        earlier.setdefault(p.image, []).append(p.line())
    prepared = []
    for name in sorted(merged):
        images = merged[name]
        first = len(report.problems)
        if name not in on_disk:
            for img in images.values():
                report.problems.append(Problem("missing_image", "annotated but not on disk; "
                                               "skipped", img.source, name))
            continue
        path = on_disk[name]
        width, height = image_size(path)
        readers: dict[str, list[Outline]] = {}
        for reader, img in sorted(images.items()):
            if img.size >= 0 and img.size != path.stat().st_size:
                report.problems.append(Problem(
                    "size_mismatch", f"VIA recorded {img.size} bytes, the file has "
                    f"{path.stat().st_size}", img.source, name))
            readers[reader] = _outlines(img, width, height, rules, cfg, report)
            report.regions += len(img.regions)
            _corrections(img, rules.class_attribute, plan, report)
        why = (_not_adjudicated(images[ADJUDICATED], readers[ADJUDICATED])
               if ADJUDICATED in readers else None)
        if why:
            report.problems.append(Problem("not_adjudicated", f"settled, but {why}: the "
                                           "readers' polygons stay the ground truth",
                                           images[ADJUDICATED].source, name))
            if len(readers) > 1:
                del readers[ADJUDICATED]
                images = {r: im for r, im in images.items() if r != ADJUDICATED}
        prepared.append((name, images, path, width, height, readers, first))
    if readers_only:   # what agreement needs: every reader's outlines, nothing built on them
        plan.readers = {p[0]: p[5] for p in prepared}
        report.images = len(prepared)
        report.annotations = sum(len(outs) for p in prepared for outs in p[5].values())
        return plan
    # the consensus of every image several readers read, over the cores
    fused = {p[0]: p[5] for p in prepared
             if ground_truth_reader(p[5], cfg.reference) == CONSENSUS}
    built = map_jobs(consensus_with_gaps, list(fused.values()), workers=workers)
    plan.consensus = {name: outs for name, (outs, _) in zip(fused, built)}
    for name, (_, gaps) in zip(fused, built):
        for gap in gaps:
            report.problems.append(Problem("no_consensus", f"left out of the consensus: {gap}",
                                           "", name))
    for name, images, path, width, height, readers, first in prepared:
        truth = ground_truth_reader(readers, cfg.reference)
        instances = plan.consensus[name] if truth == CONSENSUS else readers[truth]
        source = images[truth].source if truth in images else images[min(images)].source
        n_lumbar = sum(i.cls == "lumbar" for i in instances)
        n_sacrum = sum(i.cls == "sacrum" for i in instances)
        n_implants = max(sum(rules.class_of(r.attributes.get(rules.class_attribute, "")) in
                             cfg.implant_classes for r in img.regions)
                         for img in images.values())
        image_id = len(plan.coco_images) + 1
        plan.coco_images.append({"id": image_id, "file_name": name, "width": width,
                                 "height": height, "n_implants": n_implants})
        for inst in instances:
            plan.coco_anns.append(_annotation(inst, len(plan.coco_anns) + 1, image_id,
                                              plan.mask_values[inst.cls],
                                              source if truth != CONSENSUS else "", truth))
        if len(readers) > 1:
            plan.readers[name] = readers
        problems_here = earlier.get(name, []) + [p.line() for p in report.problems[first:]
                                                 if p.image == name]
        plan.table.append({"file_name": name, "image_id": image_id, "patient": patient_of(name),
                           "width": width, "height": height, "n_lumbar": n_lumbar,
                           "n_sacrum": n_sacrum, "n_implants": n_implants,
                           "implants": int(n_implants > 0), "problems": len(problems_here),
                           "readers": " ".join(sorted(readers)), "ground_truth": truth})
        row, spine = image_measures(
            [(i.level, np.c_[i.xs, i.ys]) for i in instances if i.cls in cfg.classes],
            pixel_spacing(read_record(path.parent, name)), refine=refine, image_name=name,
            image=(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
                   if refine else None))
        plan.measures.append({"file_name": name, **row})
        plan.jobs.append(ImageJob(str(path), Path(name).stem, width, height, instances,
                                  problems_here, plan.mask_values, tuple(cfg.classes),
                                  str(output), cfg.qa, cfg.qa_max_height, spine,
                                  row["lordosis_deg"],
                                  readers if len(readers) > 1 else None))
        plan.groups.append(_group(source, output))
    plan.coco_anns = [a for a in plan.coco_anns if a["category_id"] is not None]
    report.images, report.annotations = len(plan.coco_images), len(plan.coco_anns)
    return plan


def _outlines(img: AnnotatedImage, width: int, height: int, rules: RegionRules,
              cfg: ConvertConfig, report: ConvertReport) -> list[Outline]:
    """The image's regions checked and repaired, with levels; the problems found (and a
    missing sacrum or a lumbar count other than the study's) go to the report."""
    instances: list[Outline] = []
    for region in img.regions:
        inst, probs = validate_region(region, width, height, rules, img.source, img.filename)
        report.problems += probs
        if inst is not None:
            instances.append(inst)
    assign_levels(instances)
    n_lumbar = sum(i.cls == "lumbar" for i in instances)
    if not any(i.cls == "sacrum" for i in instances):
        report.problems.append(Problem("missing_sacrum", "no sacrum (the study expects S1)",
                                       img.source, img.filename))
    if n_lumbar != cfg.expected_lumbar or n_lumbar > len(LUMBAR):  # > 5: levels unassigned
        report.problems.append(Problem("lumbar_count", f"{n_lumbar} lumbar vertebrae (the study "
                                       f"expects {cfg.expected_lumbar}: L1-L5)" + (
            "; more than five: a transitional vertebra? levels not assigned"
            if n_lumbar > len(LUMBAR) else ""), img.source, img.filename))
    return instances


def _not_adjudicated(img: AnnotatedImage, outlines: list[Outline]) -> str | None:
    """Why a settled adjudication is not one: several readers' polygons left in it (their
    ``annotator`` attribute), or two outlines of one vertebra (overlapping by more than half)."""
    names = {r.attributes.get("annotator", "") for r in img.regions} - {""}
    if len(names) > 1:
        return f"polygons of {len(names)} readers remain ({', '.join(sorted(names))[:80]})"
    polys = [(o, o.polygon()) for o in outlines if o.level is not None]
    for k, (a, pa) in enumerate(polys):
        for b, pb in polys[k + 1:]:
            if pa.is_valid and pb.is_valid and pa.intersects(pb):
                inter = pa.intersection(pb).area
                if inter > 0.5 * min(pa.area, pb.area):
                    return (f"two outlines of one vertebra remain (regions {a.region} and "
                            f"{b.region})")
    return None


def _annotation(inst: Outline, ann_id: int, image_id: int, value: int, source: str,
                annotator: str) -> dict:
    """One COCO annotation (category None for an ignored class: dropped afterwards); a
    consensus instance has no VIA file and region ``-1``."""
    return {"id": ann_id, "image_id": image_id,
            "category_id": value if value != IGNORE else None,
            "segmentation": [flat(inst.xs, inst.ys)], "area": float(inst.polygon().area),
            "bbox": bbox(inst.xs, inst.ys), "iscrowd": 0, "level": inst.level,
            "via_file": Path(source).name if source else "", "via_region": inst.region,
            "annotator": annotator}


def _corrections(img: AnnotatedImage, class_attribute: str, plan: ConvertPlan,
                 report: ConvertReport) -> None:
    """What the annotator changed in a model's proposals (the image came from ``spinepipe
    propose``); an altered proposal record is a warning, never a lost annotation."""
    record = img.file_attributes.get(PROPOSAL_ATTRIBUTE, "")
    if not record:
        return
    try:
        proposed = read_proposal(record, img.source, img.filename)
    except InvalidViaError as exc:
        report.problems.append(Problem("proposal_record", f"{exc.message}: corrections not "
                                       "measured", img.source, img.filename))
        return
    rows = corrections(img.filename, proposed, img.regions, class_attribute)
    plan.corrections += rows
    for row in rows:
        report.corrections[row["status"]] = report.corrections.get(row["status"], 0) + 1


def _group(via_file: str | Path, output: Path) -> str:
    """The incremental-state group of a VIA file: its path relative to the output folder (the
    state is part of the output, which must not depend on where the workspace is)."""
    return os.path.relpath(Path(via_file).resolve(), output.resolve())


def _write_tables(plan: ConvertPlan, facts: dict[str, dict], via_files: list[str | Path],
                  output: Path, report: ConvertReport) -> None:
    for row in plan.table:
        f = facts[Path(row["file_name"]).stem]
        row["overlap_area"] = f["overlap_area"]
        row["overlap_pairs"] = " ".join(f["overlap_pairs"])
        row["overlap"] = int(f["overlap_area"] > 0)
        row["content"] = f.get("content", "")
    cats = categories({c: v for c, v in plan.mask_values.items() if v != IGNORE})
    write_json(output / "coco.json", {
        "info": {"description": "spinepipe convert",
                 "via_files": [str(f.path) for f in _reader_files(via_files)],
                 "readers": {str(f.path): f.reader for f in _reader_files(via_files)}},
        "images": plan.coco_images, "annotations": plan.coco_anns, "categories": cats},
        indent=None)
    buf = io.StringIO()
    fields = ["file_name", "image_id", "patient", "width", "height", "n_lumbar", "n_sacrum",
              "n_implants", "implants", "overlap", "overlap_area", "overlap_pairs", "problems",
              "readers", "ground_truth", "content"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(plan.table)
    write_text(output / "images.csv", buf.getvalue())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CORRECTION_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(plan.corrections)
    write_text(output / "correction.csv", buf.getvalue())
    write_text(output / "measures.csv", measures_csv(plan.measures))
    write_json(output / "report.json", {
        "formats": report.formats, "images": report.images, "annotations": len(plan.coco_anns),
        "class_attribute": report.class_attribute,
        "class_attribute_detected": report.class_attribute_detected,
        "counts": report.counts(), "problems": [asdict(p) for p in report.problems]})


def check(via_files: Sequence[ReaderFile | str | Path], images_dir: Path, output: Path,
          cfg: ConvertConfig, report: ConvertReport,
          measures: MeasuresConfig | None = None, workers: int = 1,
          readers_only: bool = False) -> ConvertPlan:
    """Read, find the class attribute, validate: everything before anything is written (also
    what ``spinepipe agreement`` reads the readers' outlines with: ``readers_only``)."""
    files = _reader_files(via_files)
    check_reference(cfg.reference, [f.reader for f in files],
                    file=", ".join(sorted({str(f.path.parent) for f in files})) or "the input")
    merged = _read_inputs(files, report)
    if not images_dir.is_dir():
        raise MissingInputError("images folder not found", file=images_dir)
    report.class_attribute, report.class_attribute_detected = detect_class_attribute(
        [img for readers in merged.values() for img in readers.values()], cfg.region_rules())
    on_disk = {p.name: p for p in sorted(images_dir.iterdir())
               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    plan = _plan(merged, on_disk, output, cfg, report, measures, workers, readers_only)
    if report.regions and not (report.annotations if readers_only else plan.coco_anns):
        counts = ", ".join(f"{n} {k}" for k, n in report.counts().items()) or "no problem"
        raise InvalidViaError(f"{report.regions} region(s) but not one instance survived "
                              f"({counts}; class attribute '{report.class_attribute}')",
                              file=", ".join(str(f.path) for f in files))
    return plan


def validate(via_files: list[str | Path], images_dir: str | Path,
             cfg: ConvertConfig) -> ConvertReport:
    """The validation of :func:`convert` alone: every problem, nothing written."""
    report = ConvertReport()
    check(via_files, Path(images_dir), Path("."), cfg, report)
    return report


def default_problems_file(output: str | Path) -> Path:
    """Where ``--strict`` writes the full problem list: beside the output folder."""
    output = Path(output)
    return output.parent / f"{output.name}.problems.json"


def convert(via_files: list[str | Path], images_dir: str | Path, output: str | Path,
            cfg: ConvertConfig, *, workers: int = 1, progress=None,
            problems_file: str | Path | None = None,
            measures: MeasuresConfig | None = None) -> ConvertReport:
    """Convert; raises :class:`InvalidViaError` for unreadable input and, with
    ``cfg.strict``, for any problem (after writing them all to ``problems_file``, default
    :func:`default_problems_file`), :class:`InvalidImageError` for an image that does not
    decode: in every case before any output is in place (module docstring)."""
    images_dir, output = Path(images_dir), Path(output)
    if output.exists() and not output.is_dir():
        raise OutputFolderError("the output folder is a file", file=output)
    report = ConvertReport()
    plan = check(via_files, images_dir, output, cfg, report, measures, workers)
    if cfg.strict and report.problems:
        target = Path(problems_file) if problems_file else default_problems_file(output)
        prepare_output(target.parent)  # beside the output folder, or where --problems-file says
        write_json(target, {"counts": report.counts(),
                            "problems": [asdict(p) for p in report.problems]})
        counts = ", ".join(f"{n} {k}" for k, n in report.counts().items())
        first = report.problems[0]
        err = InvalidViaError(f"{len(report.problems)} problem(s) with --strict ({counts}; "
                              f"all of them in {target}); first: {first.kind}: "
                              f"{first.message}", file=first.file or images_dir,
                              image=first.image or None, region=first.region)
        err.details = report.locations()
        raise err
    created = not output.exists()
    prepare_output(output)
    prepare_output(output / "masks")  # train and evaluate depend on it before any annotation
    remove_stale_temps(output)
    state = IncrementalState(output / STATE_FILE)
    try:
        facts, report.rendered = render_changed(plan, output, cfg, state, workers=workers,
                                                 progress=progress)
    except InvalidImageError:
        if created:
            shutil.rmtree(output, ignore_errors=True)  # nothing of this run stays
        raise
    for group in sorted(set(plan.groups) | {_group(f.path, output)
                                            for f in _reader_files(via_files)}):
        present = [j.stem for j, g in zip(plan.jobs, plan.groups) if g == group]
        for stale in state.prune(group, present):  # no longer annotated in this VIA file
            if remove_output(output, stale) and stale.startswith("masks/"):
                report.removed += 1
    _write_tables(plan, facts, via_files, output, report)
    if cfg.qa:
        qa.contact_sheets(output / "qa", [j.stem for j in plan.jobs], cfg.contact_sheet_size)
    state.save()
    return report
