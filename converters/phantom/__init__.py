"""converters.phantom: The synthetic lateral lumbar phantom: its anatomy and the DICOM / VIA /
truth it writes.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``anatomy``: The phantom's anatomy: lumbar vertebral bodies on a lordotic curve, the sacrum,
  posterior elements, iliac wings, soft tissue, degenerated discs (overlapping bodies), implants,
  and the projection that turns them into a radiograph's pixel values.
- ``writing``: Synthetic lateral lumbar spine radiographs: the product's embedded default data set.
"""

__all__ = ["anatomy", "writing"]
