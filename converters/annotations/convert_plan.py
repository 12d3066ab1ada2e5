"""convert's plan: every VIA file read (:func:`read_inputs`), every annotated image validated,
levelled and given its ground truth, and the rows and jobs that follow (:func:`plan_images`),
before anything is written. Conventions and the problems found: :mod:`converters.annotations.convert`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from converters.annotations.coco import IGNORE, bbox, flat
from converters.annotations.consensus import consensus_with_gaps
from converters.annotations.masks import ImageJob, image_size
from converters.annotations.proposals import PROPOSAL_ATTRIBUTE, corrections, read_proposal
from converters.annotations.readers import (ADJUDICATED, CONSENSUS, SETTLED, ReaderFile,
                                            ground_truth_reader)
from converters.annotations.regions import Outline, Problem, RegionRules, validate_region
from converters.annotations.via import AnnotatedImage, read_via
from converters.core.errors import InvalidViaError
from converters.core.parallel import map_jobs
from converters.core.provenance import patient_of, pixel_spacing, read_record
from converters.spine.levels import LUMBAR, assign_levels
from converters.spine.measures import image_measures
from converters.spine.refine import MeasuresConfig

if TYPE_CHECKING:  # annotations only: convert imports this module
    from converters.annotations.convert import ConvertConfig


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


def read_inputs(files: list[ReaderFile],
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


def plan_images(merged: dict[str, dict[str, AnnotatedImage]], on_disk: dict[str, Path],
                output: Path, cfg: ConvertConfig, report: ConvertReport,
                measures: MeasuresConfig | None = None, workers: int = 1,
                readers_only: bool = False) -> ConvertPlan:
    """Validate every annotated image on disk: each reader's instances and levels, the ground
    truth (:mod:`converters.annotations.readers`), COCO rows, the table; with
    ``measures.refine``, the measures' endplates refined on the image. ``readers_only``: the
    readers' outlines alone (``plan.readers``)."""
    plan = ConvertPlan(mask_values=_mask_values(cfg))
    rules = dataclasses.replace(cfg.region_rules(), class_attribute=report.class_attribute)
    for name in sorted(set(on_disk) - set(merged)):
        report.problems.append(Problem("unannotated_image", "image on disk but in no VIA file",
                                       "", name))
    earlier: dict[str, list[str]] = {}  # by image: one pass, not one per image
    for p in report.problems:
        earlier.setdefault(p.image, []).append(p.line())
    prepared = [r for name in sorted(merged)
                if (r := _read_image(name, merged[name], on_disk, rules, cfg, plan, report))]
    if readers_only:   # what agreement needs: every reader's outlines, nothing built on them
        plan.readers = {r.name: r.readers for r in prepared}
        report.images = len(prepared)
        report.annotations = sum(len(outs) for r in prepared for outs in r.readers.values())
        return plan
    # the consensus of every image several readers read, over the cores
    fused = {r.name: r.readers for r in prepared
             if ground_truth_reader(r.readers, cfg.reference) == CONSENSUS}
    built = map_jobs(consensus_with_gaps, list(fused.values()), workers=workers)
    plan.consensus = {name: outs for name, (outs, _) in zip(fused, built)}
    for name, (_, gaps) in zip(fused, built):
        for gap in gaps:
            report.problems.append(Problem("no_consensus", f"left out of the consensus: {gap}",
                                           "", name))
    for r in prepared:
        problems_here = earlier.get(r.name, []) + [p.line() for p in report.problems[r.first:]
                                                   if p.image == r.name]
        _add_image(r, problems_here, output, cfg, rules, plan, measures)
    plan.coco_anns = [a for a in plan.coco_anns if a["category_id"] is not None]
    report.images, report.annotations = len(plan.coco_images), len(plan.coco_anns)
    return plan


@dataclass
class _Read:
    """One image on disk with every reader's checked outlines (``first``: the index of its
    first problem in the report)."""

    name: str
    images: dict[str, AnnotatedImage]
    path: Path
    width: int
    height: int
    readers: dict[str, list[Outline]]
    first: int


def _read_image(name: str, images: dict[str, AnnotatedImage], on_disk: dict[str, Path],
                rules: RegionRules, cfg: ConvertConfig, plan: ConvertPlan,
                report: ConvertReport) -> _Read | None:
    """Every reader's regions of one image checked, levelled and their corrections measured;
    None for an image not on disk (a ``missing_image`` problem)."""
    first = len(report.problems)
    if name not in on_disk:
        for img in images.values():
            report.problems.append(Problem("missing_image", "annotated but not on disk; "
                                           "skipped", img.source, name))
        return None
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
    return _Read(name, images, path, width, height, readers, first)


def _add_image(r: _Read, problems_here: list[str], output: Path, cfg: ConvertConfig,
               rules: RegionRules, plan: ConvertPlan, measures: MeasuresConfig | None) -> None:
    """One image's ground truth into the plan: its COCO rows, its table row, its measures
    (refined on the image where ``measures.refine`` says) and its rendering job."""
    refine = measures if measures is not None and measures.refine else None
    truth = ground_truth_reader(r.readers, cfg.reference)
    instances = plan.consensus[r.name] if truth == CONSENSUS else r.readers[truth]
    source = r.images[truth].source if truth in r.images else r.images[min(r.images)].source
    n_implants = max(sum(rules.class_of(g.attributes.get(rules.class_attribute, "")) in
                         cfg.implant_classes for g in img.regions)
                     for img in r.images.values())
    image_id = len(plan.coco_images) + 1
    plan.coco_images.append({"id": image_id, "file_name": r.name, "width": r.width,
                             "height": r.height, "n_implants": n_implants})
    for inst in instances:
        plan.coco_anns.append(_annotation(inst, len(plan.coco_anns) + 1, image_id,
                                          plan.mask_values[inst.cls],
                                          source if truth != CONSENSUS else "", truth))
    several = r.readers if len(r.readers) > 1 else None
    if several:
        plan.readers[r.name] = several
    plan.table.append({"file_name": r.name, "image_id": image_id, "patient": patient_of(r.name),
                       "width": r.width, "height": r.height,
                       "n_lumbar": sum(i.cls == "lumbar" for i in instances),
                       "n_sacrum": sum(i.cls == "sacrum" for i in instances),
                       "n_implants": n_implants, "implants": int(n_implants > 0),
                       "problems": len(problems_here), "readers": " ".join(sorted(r.readers)),
                       "ground_truth": truth})
    row, spine = image_measures(
        [(i.level, np.c_[i.xs, i.ys]) for i in instances if i.cls in cfg.classes],
        pixel_spacing(read_record(r.path.parent, r.name)), refine=refine, image_name=r.name,
        checks=measures,
        image=(cv2.imread(str(r.path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
               if refine else None))
    plan.measures.append({"file_name": r.name, **row})
    plan.jobs.append(ImageJob(str(r.path), Path(r.name).stem, r.width, r.height, instances,
                              problems_here, plan.mask_values, tuple(cfg.classes),
                              str(output), cfg.qa, cfg.qa_max_height, spine,
                              row["lordosis_deg"], several))
    plan.groups.append(group_of(source, output))


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


def group_of(via_file: str | Path, output: Path) -> str:
    """The incremental-state group of a VIA file: its path relative to the output folder (the
    state is part of the output, which must not depend on where the workspace is)."""
    return os.path.relpath(Path(via_file).resolve(), output.resolve())
