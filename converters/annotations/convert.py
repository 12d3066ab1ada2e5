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
import io
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from converters.annotations import qa
from converters.annotations.coco import IGNORE, categories
from converters.annotations.convert_plan import (ConvertPlan, ConvertReport, group_of,
                                                 plan_images, read_inputs)
from converters.annotations.masks import render_changed
from converters.annotations.proposals import CORRECTION_FIELDS
from converters.annotations.readers import DEFAULT_READER, ReaderFile, check_reference
from converters.annotations.regions import RegionRules, detect_class_attribute
from converters.annotations.via import MAX_POINTS
from converters.core.errors import (InvalidImageError, InvalidViaError, MissingInputError,
                                    OutputFolderError)
from converters.core.files import (prepare_output, remove_output, remove_stale_temps, write_json,
                                   write_text)
from converters.core.incremental import IncrementalState
from converters.spine.measures import measures_csv
from converters.spine.refine import MeasuresConfig

__all__ = ["IMAGE_SUFFIXES", "STATE_FILE", "ConvertConfig", "ConvertPlan", "ConvertReport",
           "check", "convert", "default_problems_file", "validate"]

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
# the whole conversion (the plan: converters/annotations/convert_plan.py)


def _reader_files(via_files: Sequence[ReaderFile | str | Path]) -> list[ReaderFile]:
    """Files given as paths belong to the ``default`` reader."""
    return [f if isinstance(f, ReaderFile) else ReaderFile(DEFAULT_READER, Path(f))
            for f in via_files]


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
    merged = read_inputs(files, report)
    if not images_dir.is_dir():
        raise MissingInputError("images folder not found", file=images_dir)
    report.class_attribute, report.class_attribute_detected = detect_class_attribute(
        [img for readers in merged.values() for img in readers.values()], cfg.region_rules())
    on_disk = {p.name: p for p in sorted(images_dir.iterdir())
               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    plan = plan_images(merged, on_disk, output, cfg, report, measures, workers, readers_only)
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
    for group in sorted(set(plan.groups) | {group_of(f.path, output)
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
