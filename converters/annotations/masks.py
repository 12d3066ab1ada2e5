"""The pictures convert draws per image: the class mask, the overlap map and the QA overlay,
rendered only for images whose inputs changed, each written under a temporary name and moved
into place with the others; an image is redone when its polygons, problems, file or this drawing
code changed. :mod:`converters.annotations.convert` plans the conversion
and writes the tables.

Masks: 8-bit PNG label maps, one value per class (the order of ``convert.classes``, from 1;
background 0); the
overlap map: 1 where two or more vertebrae overlap; polygons rasterized by pycocotools in the COCO
convention of :mod:`converters.annotations.coco` (pixel centres at +0.5).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from converters.annotations import qa
from converters.annotations.coco import (PNG_LABEL_PARAMS, flat, overlap_labels, overlap_map,
                                         paint, rasterize_window)
from converters.core.errors import InvalidImageError
from converters.core.incremental import IncrementalState
from converters.core.files import move_into_place, temp_name, write_bytes
from converters.core.parallel import map_jobs
from converters.core.paths import confined
from converters.dicom.pixels import MAX_PIXELS
from converters.spine.endplates import Spine
from converters.annotations.regions import Outline
from converters.core.records import open_input

if TYPE_CHECKING:  # annotations only: convert imports this module
    from converters.annotations.convert import ConvertConfig
    from converters.annotations.convert_plan import ConvertPlan


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG header without decoding; other formats through OpenCV.
    :class:`InvalidImageError` for an unreadable image or one over :data:`MAX_PIXELS`."""
    with open_input(path) as fh:  # a regular file: a FIFO would block
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = (int(v) for v in struct.unpack(">II", head[16:24]))
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InvalidImageError("image cannot be read", file=path)
        w, h = int(img.shape[1]), int(img.shape[0])
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        raise InvalidImageError(f"image header claims {w}x{h} pixels (at most "
                                f"{MAX_PIXELS // 1_000_000} megapixels are accepted)", file=path)
    return w, h


@dataclass
class ImageJob:
    path: str
    stem: str
    width: int
    height: int
    instances: list[Outline]
    problems: list[str]
    mask_values: dict[str, int]
    vertebra_classes: tuple[str, ...]
    out: str
    qa: bool
    qa_max_height: int
    spine: Spine | None = None           # endplates, drawn on the QA overlay
    lordosis: float | None = None
    #: every reader's outlines when several read the image (drawn under the ground truth)
    readers: dict[str, list[Outline]] | None = None


@lru_cache(maxsize=8)
def _blank_png(height: int, width: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width), np.uint8), PNG_LABEL_PARAMS)[1].tobytes()


def _render(job: ImageJob) -> dict:
    """Masks, overlap map and QA overlay of one image, written under temporary names;
    returns its overlap facts and ``(temporary, final)`` pairs, or ``{"error": ...}``."""
    written: list[tuple[str, str]] = []
    try:
        facts = _render_into(job, written)
    except InvalidImageError as exc:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        return {"error": str(exc)}
    return {"facts": facts, "written": written}


def _write_temp(path: Path, data: bytes, written: list[tuple[str, str]]) -> None:
    tmp = temp_name(path)
    write_bytes(tmp, data)
    written.append((str(tmp), str(path)))


def _render_into(job: ImageJob, written: list[tuple[str, str]]) -> dict:
    h, w = job.height, job.width
    out = Path(job.out)
    windows = [rasterize_window(flat(i.xs, i.ys), h, w) for i in job.instances]  # once each
    mask = paint(h, w, [(job.mask_values[i.cls], win)
                        for i, win in zip(job.instances, windows)])
    vert = [i for i in job.instances if i.cls in job.vertebra_classes]
    overlap = overlap_map(h, w, [win for i, win in zip(job.instances, windows)
                                 if i.cls in job.vertebra_classes])
    overlap_area = int(np.count_nonzero(overlap)) if overlap is not None else 0
    pairs = []
    if overlap_area:  # through a spatial index: linear in regions (converters.annotations.coco)
        pairs = overlap_labels([i.polygon() for i in vert], [i.level or "?" for i in vert])
    for folder, arr in (("masks", mask), ("overlaps", overlap)):
        if folder == "overlaps" and not overlap_area:
            data = _blank_png(h, w)  # most images have no overlap: encode that once per size
        else:
            data = cv2.imencode(".png", arr, PNG_LABEL_PARAMS)[1].tobytes()
        _write_temp(confined(out, folder, f"{job.stem}.png"), data, written)
    if job.qa:
        _write_temp(confined(out, "qa", f"{job.stem}.png"),
                    qa.overlay(job.path, w, h, job.instances, job.problems, job.qa_max_height,
                               spine=job.spine, lordosis=job.lordosis, readers=job.readers),
                    written)
    # the image's own fingerprint, free of names and keys: what the split orders images by
    with open_input(job.path) as fh:
        content = hashlib.sha1(fh.read()).hexdigest()[:16]
    return {"overlap_area": overlap_area, "overlap_pairs": sorted(set(pairs)),
            "content": content}


@lru_cache(maxsize=1)
def _render_code() -> str:
    """A hash of the code that draws masks, overlap maps and overlays: a new version of it
    re-renders every image (DVC re-runs the stage; this makes the stage redo the work)."""
    from converters.annotations import coco
    from converters.spine import measures
    h = hashlib.sha1()
    for module in (coco, measures, qa):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def render_changed(plan: ConvertPlan, output: Path, cfg: ConvertConfig, state: IncrementalState,
                    *, workers: int, progress) -> tuple[dict[str, dict], int]:
    """Rasterize the images whose inputs changed, all into temporary names, then move them
    into place together; the first failure removes them all and raises."""
    cfg_key = hashlib.sha1(json.dumps([asdict(cfg), _render_code()], sort_keys=True)
                           .encode()).hexdigest()
    folders = ("masks", "overlaps", "qa") if cfg.qa else ("masks", "overlaps")
    todo, facts = [], {}
    for job, group in zip(plan.jobs, plan.groups):
        st = Path(job.path).stat()
        key = hashlib.sha1(json.dumps([
            [asdict(i) for i in job.instances], job.problems, st.st_size, st.st_mtime_ns,
            {r: [asdict(i) for i in outs] for r, outs in sorted((job.readers or {}).items())},
            cfg_key]).encode()).hexdigest()
        prev = state.up_to_date(group, job.stem, [key], output)
        if prev:
            facts[job.stem] = prev["facts"]
        else:
            todo.append((job, group, key))
    results = map_jobs(_render, [j for j, _, _ in todo], workers=workers, progress=progress)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        for r in results:
            for tmp, _ in r.get("written", []):
                Path(tmp).unlink(missing_ok=True)
        raise InvalidImageError(errors[0] + (f" (and {len(errors) - 1} more image(s))"
                                             if len(errors) > 1 else ""))
    for (job, group, key), r in zip(todo, results):
        for tmp, final in r["written"]:
            move_into_place(tmp, final)
        facts[job.stem] = r["facts"]
        state.record(group, job.stem, [key], [f"{d}/{job.stem}.png" for d in folders],
                     facts=r["facts"])
    return facts, len(todo)
