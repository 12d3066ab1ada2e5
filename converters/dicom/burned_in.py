"""Burned-in text in radiographs: looked for by OCR, never trusted to a flag.

BurnedInAnnotation is optional in CR and often wrong; a name written into the pixels by the
modality or a workstation would reach the exported PNG. :func:`find_burned_in_text` looks for
it with Tesseract (Debian's ``tesseract-ocr``, driven through ``pytesseract``), the engine of
RSNA CTP's pixel anonymizer and Microsoft Presidio's DICOM image redactor;
:func:`blank_boxes` fills what was found.

Data conventions:

- ``pixels``: one 2-D frame of stored values, any integer (or float) dtype and bit depth,
  either polarity (MONOCHROME1 or MONOCHROME2: text may be brighter or darker than what is
  around it). It is never modified.
- Boxes are ``x, y, w, h`` in pixels of that array: x to the right (columns), y down (rows),
  (0, 0) the top-left corner of the top-left pixel; a box covers columns ``x .. x+w-1`` and rows
  ``y .. y+h-1`` and lies inside the image. One box per line of text, padded around the glyphs
  (by :data:`LINE_PAD` of the line's height), so that blanking it removes the whole line,
  including characters Tesseract did not read.

How (the budget is 0.3 s per 1100 x 2870 12-bit image on one core; measured with
``benchmarks/bench_anonymize.py``):

1. A copy halved (2 x 2 area averages) until its longer side is at most :data:`DETECT_SIDE`,
   stretched to 8 bits between its 0.5th and 99.5th percentiles.
2. Candidate lines, found cheaply in both polarities: strokes are thin structures brighter
   (white top-hat) or darker (black top-hat) than what is around them by
   :data:`MIN_CONTRAST`; they are closed horizontally into pieces, pieces on one baseline
   are joined into lines, a block of lines written close together is cut at its empty rows.
   A line is kept when it is at least :data:`LINE_ASPECT` times as wide as tall and between
   :data:`MIN_LINE_HEIGHT` (and :data:`MIN_TEXT_PX` image pixels) and a tenth of the image
   tall; at most ``max_lines``, those nearest the image's border first (where labels are
   written). Smooth anatomy, step edges and implants give no strokes.
3. Each candidate is cut from the full-resolution image, scaled to a line height Tesseract
   reads well (:data:`OCR_LINE_HEIGHT`) and binarised against its local mean in the text's
   polarity; marks far larger than a character (anatomy, implants, a label's band) and
   specks are dropped. A candidate with fewer than :data:`MIN_MARKS` character-sized marks
   is not read (bone texture gives 2-4), so most clean images cost no OCR at all. The rest
   are stacked into one mosaic: one Tesseract run per image (LSTM engine,
   :data:`TESSERACT_CONFIG`, one thread: ``OMP_THREAD_LIMIT=1`` unless set). The mosaic
   reaches Tesseract through pytesseract's temporary PNG file (mode 0600 in the system
   temporary folder, removed when the run ends).
4. A line is text when its words of two or more letters or digits read with confidence >=
   ``min_confidence`` hold ``min_chars`` of them, or when one word looks like an ID, a date
   or a name in capitals (:data:`LONG_WORD`) read with confidence >=
   :data:`LONG_WORD_CONFIDENCE`; the other candidate lines of the same label, read or not,
   are then taken too (blanking removes the whole label). A single letter (an L/R lead marker),
   stray marks
   and what Tesseract reads into bone texture or screws are not text.

The text read (``TextBox.text``) is identifying: it is for the caller's decision and tests,
never for an audit record or a log.

Measured rates (false positives on phantom radiographs, detection of names burned into
their corners and of the phantom's label) and the time per image are printed by
``benchmarks/bench_anonymize.py --ocr-eval N``.

Errors: a missing ``tesseract`` program, a Tesseract crash or timeout raise
:class:`~converters.core.errors.SpinepipeError` (one line). A non-2-D array raises
:class:`~converters.core.errors.InvalidImageError`.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import cv2
import numpy as np

from converters.core.errors import InvalidImageError, SpinepipeError

#: the longest side of the copy searched for candidate lines, in pixels (at most)
DETECT_SIDE = 720
#: minimum contrast of a text stroke with its surroundings (8-bit units of the normalised copy)
MIN_CONTRAST = 32
#: the widest stroke (pixels of the small copy) still taken for text: the top-hats' square
STROKE_KERNEL = 9
#: the smallest line of text looked for: in pixels of the small copy (16 full pixels of a
#: 2870-pixel image) and of the image (smaller text is not legible); a line's least
#: width / height
MIN_LINE_HEIGHT = 4
MIN_TEXT_PX = 7
LINE_ASPECT = 2.5
#: a word this long (letters and digits) that looks like an ID, a date or a name in
#: capitals, read with this confidence, is text on its own
LONG_WORD = 6
LONG_WORD_CONFIDENCE = 40.0
#: character-sized marks a candidate line must hold to be read at all (the texture of bone
#: and noise gives 2-4, a line of a label 5 or more)
MIN_MARKS = 5
#: height of a line of text in the mosaic given to Tesseract, in pixels
OCR_LINE_HEIGHT = 40
#: padding of a returned box around its line, as a fraction of the line's height
LINE_PAD = 0.35
#: Tesseract's options: LSTM engine, the mosaic read as one block of text lines
TESSERACT_CONFIG = "--oem 1 --psm 6"


@dataclass(frozen=True)
class TextBox:
    """One line of text found in the pixels: its box (``x, y, w, h`` in pixels of the input
    array), the words read (identifying: never for an audit record or a log), and their
    mean Tesseract confidence (0-100)."""

    x: int
    y: int
    w: int
    h: int
    text: str
    confidence: float

    @property
    def region(self) -> list[int]:
        """``[x, y, width, height]``, as ``anonymize.blank_regions`` takes it."""
        return [self.x, self.y, self.w, self.h]


def find_burned_in_text(pixels: np.ndarray, *, min_confidence: float = 70.0,
                        min_chars: int = 5, max_lines: int = 24,
                        timeout_s: float = 30.0) -> list[TextBox]:
    """The lines of text burned into ``pixels`` (one 2-D frame), as padded boxes, in reading
    order (top to bottom). An empty list means none was found."""
    img = _as_frame(pixels)
    small, scale = _normalised_copy(img)
    lines = _candidate_lines(small, scale, max_lines)
    if not lines:
        return []
    boxes = [_full_box(b, scale, img.shape) for b in lines]
    mosaic, rows = _mosaic(img, boxes)
    words = _ocr(mosaic, timeout_s) if mosaic is not None else []
    read = {i: [(t, c) for t, c, y in words if top <= y < bottom] for i, top, bottom in rows}
    found = []
    for i in _text_lines(boxes, read, min_confidence, min_chars):
        sure = [(t, c) for t, c in read.get(i, []) if c >= min_confidence] or read.get(i, [])
        found.append(TextBox(*boxes[i], text=" ".join(t for t, _ in sure),
                             confidence=float(np.mean([c for _, c in sure])) if sure else 0.0))
    return sorted(found, key=lambda b: (b.y, b.x))


def _text_lines(boxes, read: dict[int, list[tuple[str, float]]], min_confidence: float,
                min_chars: int) -> list[int]:
    """Which candidate lines hold text: ``min_chars`` letters or digits in words of two or
    more of them read with confidence >= ``min_confidence``; or one word that looks like an
    ID, a date or a name in capitals (:data:`LONG_WORD` letters or digits, two of them
    digits or all letters capitals) read with confidence >= :data:`LONG_WORD_CONFIDENCE`.
    Then, as long as any is added, every candidate of the same label (its box touching a
    text line's box, above or below it), read or not: blanking takes the whole label, its
    short lines (an age, a sex) included."""
    text = {i for i, words in read.items()
            if sum(_alnum(t) for t, c in words if c >= min_confidence and _alnum(t) >= 2)
            >= min_chars or any(_looks_like_id(t) and c >= LONG_WORD_CONFIDENCE
                                for t, c in words)}
    added = True
    while added:
        more = {i for i in range(len(boxes))
                if i not in text and any(_same_label(boxes[i], boxes[j]) for j in text)}
        text |= more
        added = bool(more)
    return sorted(text)


def _alnum(word: str) -> int:
    return sum(ch.isalnum() for ch in word)


def _looks_like_id(word: str) -> bool:
    letters = [ch for ch in word if ch.isalpha()]
    return _alnum(word) >= LONG_WORD and (
        sum(ch.isdigit() for ch in word) >= 2 or all(ch.isupper() for ch in letters))


def _same_label(a, b) -> bool:
    """Whether two line boxes (padded) touch, one above the other, overlapping in x."""
    return (a[0] < b[0] + b[2] and b[0] < a[0] + a[2]
            and a[1] <= b[1] + b[3] and b[1] <= a[1] + a[3])


def blank_boxes(pixels: np.ndarray, boxes, pad: int = 0,
                fill: int | float | None = None) -> np.ndarray:
    """A copy of ``pixels`` with every box (a :class:`TextBox` or ``[x, y, w, h]``), grown by
    ``pad`` pixels on each side and clipped to the image, filled with ``fill`` (default: the
    image's minimum, as ``anonymize.burned_in: blank`` does). ``pixels`` is not modified."""
    out = np.array(pixels, copy=True)
    if out.ndim != 2:
        raise InvalidImageError(f"cannot blank text in a {out.ndim}-D pixel array (one frame "
                                "of one sample per pixel expected)")
    value = out.min() if fill is None else fill
    rows, cols = out.shape
    for b in boxes:
        x, y, w, h = b.region if isinstance(b, TextBox) else (int(v) for v in b)
        x0, y0 = min(max(x - pad, 0), cols), min(max(y - pad, 0), rows)
        x1, y1 = min(max(x + w + pad, 0), cols), min(max(y + h + pad, 0), rows)
        out[y0:y1, x0:x1] = value
    return out


# --------------------------------------------------------------------------------------------
# 1-2: a normalised copy and candidate lines in it


def _as_frame(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise InvalidImageError(f"cannot look for burned-in text in a pixel array of shape "
                                f"{arr.shape} (one frame of one sample per pixel expected)")
    if arr.dtype.kind not in "uifb":
        raise InvalidImageError(f"cannot look for burned-in text in {arr.dtype} pixels")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return arr


def _to_8bit(a: np.ndarray, low: float, high: float) -> np.ndarray:
    """``a`` stretched to 0-255 between its ``low`` and ``high`` percentiles (estimated on
    every third row and column of a large array)."""
    step = 3 if a.size > 90_000 else 1
    sample = a[::step, ::step]
    lo, hi = np.percentile(sample, [low, high])
    gain = 255.0 / max(float(hi - lo), 1e-6)
    return np.clip((a.astype(np.float32, copy=False) - lo) * gain, 0, 255).astype(np.uint8)


def _normalised_copy(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The image halved (2 x 2 area averages; OpenCV's fastest path) until its longer side is
    at most :data:`DETECT_SIDE`, as 8 bits; and the scale (small pixels per full pixel)."""
    small = img if img.dtype in _RESIZABLE else img.astype(np.float32)
    while max(small.shape) > DETECT_SIDE and min(small.shape) >= 2:
        small = cv2.resize(small, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return _to_8bit(small, 0.5, 99.5), small.shape[1] / img.shape[1]


#: pixel types OpenCV resizes as they are (others are converted to float first)
_RESIZABLE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16),
              np.dtype(np.float32), np.dtype(np.float64))


def _candidate_lines(small: np.ndarray, scale: float,
                     max_lines: int) -> list[tuple[int, int, int, int]]:
    """Boxes (small-copy pixels) of what looks like a line of characters, bright or dark,
    those nearest the image's border first. Strokes are thin structures brighter (white
    top-hat) or darker (black top-hat) than what is around them: smooth anatomy and step
    edges do not respond."""
    se = cv2.getStructuringElement(cv2.MORPH_RECT, (STROKE_KERNEL, STROKE_KERNEL))
    rows, cols = small.shape
    min_h = max(MIN_LINE_HEIGHT, int(np.ceil(MIN_TEXT_PX * scale)))
    max_h = max(min_h, rows // 10)
    found: list[tuple[int, tuple[int, int, int, int]]] = []
    for op in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        _, strokes = cv2.threshold(cv2.morphologyEx(small, op, se), MIN_CONTRAST - 1, 1,
                                   cv2.THRESH_BINARY)
        joined = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE,
                                  cv2.getStructuringElement(cv2.MORPH_RECT, (5, 1)))
        _, _, stats, _ = _components(joined)
        hs, area = stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_AREA]
        ok = (hs >= min_h) & (hs <= max_h) & (area >= 0.2 * stats[1:, cv2.CC_STAT_WIDTH] * hs)
        pieces = [tuple(int(v) for v in row[:4]) for row in stats[1:][ok]]
        for group in _group_lines(pieces):
            lines = _split_rows(strokes, group) if group[3] >= 2 * min_h else [group]
            for x, y, w, h in lines:
                if w >= LINE_ASPECT * h and min_h <= h <= max_h:
                    found.append((min(x, y, cols - x - w, rows - y - h), (x, y, w, h)))
    # a line is found in both polarities (its strokes and the gaps between them); of a
    # label's block, the lines are kept and the block around them (the gaps between the
    # lines in the other polarity) is not
    boxes = [box for _, box in sorted(found)]
    kept: list[tuple[int, int, int, int]] = []
    for box in boxes:
        if (len(kept) < max_lines and not _holds_lines(box, boxes)
                and not any(_mostly_inside(box, k) or _mostly_inside(k, box) for k in kept)):
            kept.append(box)
    return kept


def _holds_lines(box, boxes) -> bool:
    """Whether ``box`` holds two of ``boxes`` one above the other (lines of a block)."""
    inner = [b for b in boxes if b != box and b[3] < 0.75 * box[3] and _mostly_inside(b, box)]
    return any(a[1] + a[3] <= b[1] for a in inner for b in inner)


def _mostly_inside(a, b) -> bool:
    """Whether half of box ``a`` lies in box ``b``."""
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return ix > 0 and iy > 0 and ix * iy >= 0.5 * a[2] * a[3]


def _split_rows(strokes: np.ndarray, box) -> list[tuple[int, int, int, int]]:
    """A box cut at its rows with (almost) no strokes: the lines of a label written close
    together."""
    x, y, w, h = box
    count = np.count_nonzero(strokes[y:y + h, x:x + w], axis=1)
    inked = count > max(1, 0.05 * count.max())
    out, start = [], None
    for i, on in enumerate(np.append(inked, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((x, y + start, w, i - start))
            start = None
    return out


def _group_lines(pieces: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Pieces (words, letters) joined left to right into lines: a piece joins a line when
    their rows overlap by half the smaller height, their heights differ by less than 2.5x and
    the gap between them is under 1.5 line heights."""
    lines: list[list[int]] = []  # [x0, y0, x1, y1]
    for x, y, w, h in sorted(pieces):
        for ln in lines:
            lh = ln[3] - ln[1]
            overlap = min(ln[3], y + h) - max(ln[1], y)
            if (overlap >= 0.5 * min(lh, h) and max(lh, h) < 2.5 * min(lh, h)
                    and x - ln[2] <= 1.5 * max(lh, h)):
                ln[:] = [ln[0], min(ln[1], y), max(ln[2], x + w), max(ln[3], y + h)]
                break
        else:
            lines.append([x, y, x + w, y + h])
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in lines]


def _components(mask: np.ndarray):
    """8-connected components of a 0/1 mask with their stats; 16-bit labels (several times
    faster) whenever they cannot overflow."""
    ltype = cv2.CV_16U if np.count_nonzero(mask) < 65535 else cv2.CV_32S
    return cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=ltype)


def _full_box(box, scale: float, shape) -> tuple[int, int, int, int]:
    """A small-copy box in full-resolution pixels, padded by :data:`LINE_PAD` of its height,
    clipped to the image."""
    x, y, w, h = (v / scale for v in box)
    pad = LINE_PAD * h + 1
    x0, y0 = max(0, int(x - pad)), max(0, int(y - pad))
    x1, y1 = min(shape[1], int(np.ceil(x + w + pad))), min(shape[0], int(np.ceil(y + h + pad)))
    return x0, y0, x1 - x0, y1 - y0


# --------------------------------------------------------------------------------------------
# 3-4: one mosaic of line crops, one Tesseract run


def _dark_on_light(crop: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """A line crop scaled to ``size`` and binarised, text black on white; and the number of
    character-sized marks in it. A pixel is ink when it stands out from its neighbourhood's
    mean (a window of two line heights, so anatomy and gradients drop out); of the two
    polarities, the text's is the one whose character-sized marks stand out more in all."""
    interp = cv2.INTER_AREA if size[1] < crop.shape[0] else cv2.INTER_CUBIC
    c = cv2.resize(crop.astype(np.float32), size, interpolation=interp)
    dev = c - cv2.blur(c, (2 * OCR_LINE_HEIGHT + 1,) * 2, borderType=cv2.BORDER_REFLECT)
    floor = max(float(c.max() - c.min()) * 0.03, 1e-6)  # 3 % of the crop's range
    k = int(0.97 * (dev.size - 1))
    best = (-1.0, np.full(dev.shape, 255, np.uint8), 0)
    for text in (dev, -dev):
        strong = float(np.partition(text.ravel(), k)[k])  # the 97th percentile
        ink = (text > max(floor, 0.4 * strong)).astype(np.uint8)
        marks, chars = _character_marks(ink)
        strength = float(text[marks == 0].sum())
        if strength > best[0]:
            best = (strength, marks, chars)
    return best[1], best[2]


def _character_marks(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """``ink`` (1 = ink) without marks far larger than a character (an edge of anatomy, an
    implant, a label's band) or specks of noise, as black on white; and how many of the
    marks left are character-sized."""
    _, labels, stats, _ = _components(ink)
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    lh = OCR_LINE_HEIGHT
    keep = (h <= 1.6 * lh) & (w <= 4 * lh) & (np.maximum(w, h) >= 0.15 * lh)
    keep[0] = False  # the background
    chars = int(np.count_nonzero(keep & (h >= 0.4 * lh)))
    return np.where(keep[labels], 0, 255).astype(np.uint8), chars


def _mosaic(img: np.ndarray, boxes) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """The line crops that hold :data:`MIN_MARKS` character-sized marks or more, stacked
    top to bottom on white, each scaled to :data:`OCR_LINE_HEIGHT` (None when there is
    none); and for each one its index in ``boxes`` and its row range in the mosaic."""
    gap = OCR_LINE_HEIGHT // 2
    crops = []
    for i, (x, y, w, h) in enumerate(boxes):
        f = OCR_LINE_HEIGHT * (1 + 2 * LINE_PAD) / max(h, 1)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        line, chars = _dark_on_light(img[y:y + h, x:x + w], size)
        if chars >= MIN_MARKS:
            crops.append((i, line))
    if not crops:
        return None, []
    width = max(c.shape[1] for _, c in crops) + 2 * gap
    mosaic = np.full((sum(c.shape[0] + gap for _, c in crops) + gap, width), 255, np.uint8)
    rows, top = [], gap
    for i, c in crops:
        mosaic[top:top + c.shape[0], gap:gap + c.shape[1]] = c
        rows.append((i, top - gap // 2, top + c.shape[0] + gap // 2))
        top += c.shape[0] + gap
    return mosaic, rows


def check_ocr_available() -> str:
    """Tesseract's version; a one-line :class:`SpinepipeError` when it is not installed (for
    a stage to fail once, before its first file, rather than on every file). Asks the program
    itself: importing pytesseract costs a quarter of a second (it imports pandas when
    installed), and most images never need it (see :func:`_ocr`)."""
    try:
        done = subprocess.run([TESSERACT, "--version"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        raise SpinepipeError(_MISSING) from None
    words = (done.stdout or done.stderr).split()  # "tesseract 5.3.0 ..."
    if done.returncode != 0 or len(words) < 2 or words[0] != "tesseract":
        raise SpinepipeError(_MISSING)
    return words[1]


#: The OCR program (Debian's tesseract-ocr), found on PATH.
TESSERACT = "tesseract"

_MISSING = ("the OCR program 'tesseract' is not installed (Debian package tesseract-ocr; "
            "`make system-deps` installs it)")


def _ocr(mosaic: np.ndarray, timeout_s: float) -> list[tuple[str, float, float]]:
    """Words Tesseract reads in the mosaic: (text, confidence, vertical centre)."""
    import pytesseract  # imported here: only images with text-like lines need it

    pytesseract.pytesseract.tesseract_cmd = TESSERACT

    # one core per worker process, for the tesseract child only: left in this process's
    # environment, OMP_THREAD_LIMIT would reach every later child (a torch training started
    # from the same process hangs in oneDNN's OpenMP barrier under a limit of 1)
    saved = os.environ.get("OMP_THREAD_LIMIT")
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        data = pytesseract.image_to_data(mosaic, config=TESSERACT_CONFIG, timeout=timeout_s,
                                         output_type=pytesseract.Output.DICT)
    except pytesseract.TesseractNotFoundError:
        raise SpinepipeError(_MISSING) from None
    except (pytesseract.TesseractError, RuntimeError) as exc:
        raise SpinepipeError(f"OCR failed: {exc}".splitlines()[0]) from None
    finally:
        if saved is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
    words = []
    for text, conf, top, height in zip(data["text"], data["conf"], data["top"], data["height"]):
        text = str(text).strip()
        if text and float(conf) >= 0:
            words.append((text, float(conf), top + height / 2))
    return words
