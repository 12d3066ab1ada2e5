"""One exception hierarchy for bad user input (DESIGN.md, convention 4).

Every error a user can cause derives from :class:`SpinepipeError` and knows the file it is
about and, where it applies, the image / region / tag inside it. The CLI prints
``Error: <what>, in <file>[, image X][, region N]`` and exits with status 1. Anything else that
escapes is a bug and keeps its traceback.

Errors are named by the fault, never by a command: the library says *what* is missing or
wrong (:class:`MissingInputError` knows which stage produces the missing input), and the
command line adds the words for the user ("run spinepipe split first").
"""
from __future__ import annotations

import traceback
from pathlib import Path

#: the libraries that parse hostile bytes for spinepipe (DICOM, its pixel codecs): what they
#: raise on a malformed file is the file's fault
PARSERS = frozenset({"pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "PIL", "numpy"})


class SpinepipeError(Exception):
    """Base class: a problem with the user's input, arguments or data."""

    def __init__(self, message: str, *, file: str | Path | None = None,
                 image: str | None = None, region: int | None = None,
                 tag: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.image = image
        self.region = region
        self.tag = tag
        #: lines the CLI prints above the one-line error (the first problems of many)
        self.details: list[str] = []

    def __str__(self) -> str:
        parts = [self.message]
        if self.file:
            parts.append(f"in {self.file}")
        if self.image is not None:
            parts.append(f"image {self.image}")
        if self.region is not None:
            parts.append(f"region {self.region}")
        if self.tag is not None:
            parts.append(f"tag {self.tag}")
        return ", ".join(parts)


class ParamsError(SpinepipeError):
    """params.yaml is missing a section, has an unknown key or a value of the wrong type."""


class UsageError(SpinepipeError):
    """A command-line argument is out of range or inconsistent (raised in ``pipeline/`` only)."""


class MissingInputError(SpinepipeError):
    """An input file or folder does not exist; ``produced_by`` names the pipeline stage that
    makes it, when one does (the CLI turns it into a hint)."""

    def __init__(self, message: str, *, produced_by: str | None = None, **where) -> None:
        super().__init__(message, **where)
        self.produced_by = produced_by


class InvalidConfigError(SpinepipeError):
    """A setting is out of range or names something unknown (a model, a preset, a fold)."""


class InsufficientDataError(SpinepipeError):
    """The data are readable but too few for the task (a split, a test set, a fold)."""


class InvalidTableError(SpinepipeError):
    """A CSV or JSON table (a manifest, images.csv, a per-image table) cannot be read."""


class IncompleteRunError(SpinepipeError):
    """A stage ran, but some of its inputs failed (each one is reported above the error)."""


class UnsafeLocationError(SpinepipeError):
    """A folder is where it must not be (the private folder inside a public tree)."""


class InvalidDicomError(SpinepipeError):
    """A file is not readable DICOM, or lacks what the stage needs (PixelData, ...)."""


class UnsupportedDicomError(InvalidDicomError):
    """Readable DICOM that this product does not handle (transfer syntax, SOP class, ...)."""


class InvalidViaError(SpinepipeError):
    """A VIA export that cannot be read: malformed JSON, unknown version, missing keys."""


class InvalidImageError(SpinepipeError):
    """An image file that cannot be decoded (truncated, corrupt) or is implausibly large."""


class OutputFolderError(SpinepipeError):
    """The output folder cannot be used: it is a file, or cannot be created or written."""


class InvalidLedgerError(SpinepipeError):
    """The private folder's ledger or state cannot be read (malformed JSON, wrong layout)."""


class CheckpointError(SpinepipeError):
    """A checkpoint that cannot be loaded safely."""


class TrainingDivergedError(SpinepipeError):
    """A training whose loss or weights stopped being finite numbers (a learning rate too
    high for the data, a broken annotation, a layer that overflows)."""


class ShapeMismatchError(SpinepipeError):
    """Two images that must align (prediction and ground truth) differ in shape."""


def raised_by_a_parser(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside one of the :data:`PARSERS` (the innermost frame of its
    traceback decides): a malformed input, which a per-file job reports as that file's failure.
    Raised anywhere else (spinepipe's own code, the standard library it called with a wrong
    argument) the same ``KeyError`` or ``TypeError`` is a bug and keeps its traceback
    (convention 4). A wrong argument spinepipe passed to a parser still reads as the file's
    fault: the check is by place, not by intent."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    parts = Path(frames[-1].filename).parts
    # the package is the folder right below the installation's site-packages (dist-packages)
    return any(parts[i - 1] in ("site-packages", "dist-packages") and parts[i] in PARSERS
               for i in range(1, len(parts)))
