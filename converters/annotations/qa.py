"""QA pictures for people: overlays of the polygons on their image, and contact sheets.

Overlays are BGR PNGs, scaled down to at most ``qa_max_height`` rows: each polygon in its class
colour (:data:`COLOURS`, BGR), its level (L1-L5, S1) at its centroid, and the image's first
problems in red at the top; the endplates found (:mod:`converters.spine.measures`) in yellow, the
L1 and S1 endplates extended to show the lordosis angle, written at the bottom right. Contact
sheets tile the overlays as 240-pixel-high thumbnails with their names, eight to a row. Look at
them; do not read them.

Any image size is drawn, never a crash and never a huge picture: an overlay is at most
``qa_max_height`` rows and :data:`WIDTH_FACTOR` times that wide (a 16 x 60000 strip becomes
1 x 800, a 60000 x 16 one 3200 x 1), a thumbnail at most :data:`THUMB_MAX_WIDTH` wide (a wider
overlay is letterboxed), every side at least one pixel; an image without regions, or a
sheet without overlays, is drawn (or skipped) like any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from converters.core.errors import InvalidImageError
from converters.core.files import remove_output, write_bytes
from converters.spine.endplates import Spine
from converters.annotations.regions import Outline

ENDPLATE = (0, 230, 255)   # BGR yellow
THUMB_HEIGHT = 240
THUMB_MAX_WIDTH = 4 * THUMB_HEIGHT
#: an overlay is at most this many times ``qa_max_height`` wide
WIDTH_FACTOR = 4
COLOURS = {"lumbar": (60, 220, 60), "sacrum": (255, 160, 0), "cage": (255, 0, 255),
           "screw": (0, 80, 255), "rod": (0, 255, 255)}
#: the readers' own outlines under a consensus, one colour per reader (BGR), in reader order
READER_COLOURS = ((200, 120, 255), (255, 255, 120), (120, 200, 255), (180, 180, 180),
                  (120, 255, 200), (255, 120, 160))


def _draw_spine(canvas: np.ndarray, spine: Spine, lordosis: float | None, scale: float) -> None:
    """Endplate lines (yellow); the L1 superior and S1 endplates extended posteriorly until
    they meet or leave the picture, with the lordosis angle written at the top right."""
    def px(p) -> tuple[int, int]:
        return int(round(p[0] * scale * 16)), int(round(p[1] * scale * 16))

    for vt in spine.vertebrae.values():
        for plate in (vt.superior, vt.inferior):
            if plate is not None:
                cv2.line(canvas, px(plate.posterior), px(plate.anterior), ENDPLATE, 1,
                         cv2.LINE_AA, shift=4)
    if lordosis is None:
        return
    h, w = canvas.shape[:2]
    for lv in ("L1", "S1"):
        plate = spine.vertebrae[lv].superior
        d = np.subtract(plate.posterior, plate.anterior)
        d = d / max(float(np.linalg.norm(d)), 1e-9)
        far = np.asarray(plate.posterior) + d * 0.35 * max(h, w) / scale
        cv2.line(canvas, px(plate.anterior), px(far), ENDPLATE, 1, cv2.LINE_AA, shift=4)
    text = f"lordosis L1-S1 {lordosis:.1f} deg"
    for colour, thick in (((0, 0, 0), 3), (ENDPLATE, 1)):
        cv2.putText(canvas, text, (max(2, w - 7 * len(text)), h - 8), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, colour, thick, cv2.LINE_AA)


def overlay(path: str, width: int, height: int, instances: Sequence[Outline],
            problems: Sequence[str], max_height: int, *, spine: Spine | None = None,
            lordosis: float | None = None,
            readers: dict[str, Sequence[Outline]] | None = None) -> bytes:
    """PNG bytes: the image (scaled to at most ``max_height`` rows) with every polygon in its
    class colour, its level at the centroid, the endplates found and the lordosis angle
    (:mod:`converters.spine.measures`), and the first problems in red at the top. With
    ``readers`` (an image several readers read), each reader's own outlines first, dotted in
    their colour (:data:`READER_COLOURS`, named at the bottom left), the ground truth above."""
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape[:2] != (height, width):
        raise InvalidImageError("image does not decode (truncated or corrupt)", file=path)
    scale = min(1.0, max_height / max(height, 1), WIDTH_FACTOR * max_height / max(width, 1))
    if scale < 1:
        img = _shrink(img, scale)
    canvas = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for k, reader in enumerate(sorted(readers or {})):
        colour = READER_COLOURS[k % len(READER_COLOURS)]
        for inst in readers[reader]:
            pts = np.round(np.c_[inst.xs, inst.ys] * scale).astype(np.int32)
            _dotted(canvas, pts, colour)
        at = (4, canvas.shape[0] - 8 - 14 * k)
        for c, thick in (((0, 0, 0), 3), (colour, 1)):
            cv2.putText(canvas, reader[:24], at, cv2.FONT_HERSHEY_SIMPLEX, 0.35, c, thick,
                        cv2.LINE_AA)
    for inst in instances:
        pts = np.round(np.c_[inst.xs, inst.ys] * scale * 16).astype(np.int32)
        cv2.polylines(canvas, [pts], True, COLOURS.get(inst.cls, (255, 255, 255)), 1,
                      cv2.LINE_AA, shift=4)
        if inst.level:
            c = inst.polygon().centroid
            at = (int(c.x * scale) - 8, int(c.y * scale) + 4)
            for colour, thick in (((0, 0, 0), 3), (COLOURS.get(inst.cls, (255, 255, 255)), 1)):
                cv2.putText(canvas, inst.level, at, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                            thick, cv2.LINE_AA)
    if spine is not None:
        _draw_spine(canvas, spine, lordosis, scale)
    for k, text in enumerate(problems[:6]):
        cv2.putText(canvas, text[:60], (4, 14 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", canvas, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes()


def _dotted(canvas: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A closed polygon as dots every other pixel (readers' outlines under the consensus)."""
    if len(pts) < 2:
        return
    closed = np.vstack([pts, pts[:1]]).astype(np.float64)
    seg = np.diff(closed, axis=0)
    n = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / 2), 1).astype(int)
    dots = np.vstack([closed[i] + seg[i] * np.arange(k)[:, None] / k for i, k in enumerate(n)])
    dots = np.round(dots).astype(int)
    h, w = canvas.shape[:2]
    ok = (dots[:, 0] >= 0) & (dots[:, 0] < w) & (dots[:, 1] >= 0) & (dots[:, 1] < h)
    canvas[dots[ok, 1], dots[ok, 0]] = colour


def _shrink(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` scaled by ``scale`` (area interpolation), each side at least one pixel."""
    h, w = img.shape[:2]
    if round(w * scale) >= 1 and round(h * scale) >= 1:
        return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _thumbnail(img: np.ndarray, label: str) -> np.ndarray:
    """``img`` :data:`THUMB_HEIGHT` rows high (at most :data:`THUMB_MAX_WIDTH` wide: a wider
    one is letterboxed), its label written at the bottom."""
    h, w = img.shape[:2]
    width = int(w * THUMB_HEIGHT / h)
    if width <= THUMB_MAX_WIDTH:
        t = cv2.resize(img, (max(1, width), THUMB_HEIGHT))
    else:
        t = cv2.resize(img, (THUMB_MAX_WIDTH, max(1, int(h * THUMB_MAX_WIDTH / w))))
        t = cv2.copyMakeBorder(t, 0, THUMB_HEIGHT - t.shape[0], 0, 0, cv2.BORDER_CONSTANT)
    cv2.putText(t, label[:28], (2, THUMB_HEIGHT - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                (255, 255, 255), 1)
    return t


def contact_sheets(qa_dir: Path, stems: Sequence[str], per_sheet: int) -> None:
    """``contact_NNN.png`` in ``qa_dir``: the overlays ``<stem>.png`` as 240-pixel-high
    thumbnails, eight per row, ``per_sheet`` per sheet (earlier sheets are replaced)."""
    for old in qa_dir.glob("contact_*.png"):
        remove_output(qa_dir, old.name)  # regular files only
    thumbs = []
    for stem in stems:
        img = cv2.imread(str(qa_dir / f"{stem}.png"))
        if img is None:
            continue
        thumbs.append(_thumbnail(img, stem))
    for k in range(0, len(thumbs), per_sheet):
        chunk = thumbs[k:k + per_sheet]
        width = max(t.shape[1] for t in chunk)
        chunk = [cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1], cv2.BORDER_CONSTANT)
                 for t in chunk]
        cols = 8
        rows = [np.hstack(chunk[i:i + cols] + [np.zeros_like(chunk[0])] * (cols - len(chunk[i:i + cols])))
                for i in range(0, len(chunk), cols)]
        ok, buf = cv2.imencode(".png", np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        write_bytes(qa_dir / f"contact_{k // per_sheet:03d}.png", buf.tobytes())
