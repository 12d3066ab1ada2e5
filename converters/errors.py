"""One exception hierarchy for bad user input (DESIGN.md, convention 4).

Every error a user can cause derives from :class:`SpinepipeError` and knows the file it is
about and, where it applies, the image / region / tag inside it. The CLI prints
``Error: <what>, in <file>[, image X][, region N]`` and exits with status 1. Anything else that
escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


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
    """A command-line argument is out of range or inconsistent."""


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


class ShapeMismatchError(SpinepipeError):
    """Two images that must align (prediction and ground truth) differ in shape."""
