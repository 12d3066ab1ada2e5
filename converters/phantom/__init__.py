"""converters.phantom: The synthetic lateral lumbar phantom: a plan of cases, their anatomy
projected through real image physics, and the DICOM / VIA / truth it writes.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``plan``: What to generate (``PhantomConfig``, the ``phantom:`` params) and, per image, every
  random feature drawn once into its ``Case`` (anatomy, disease, implants, exposure).
- ``shapes``: Vertebral body and sacrum outlines, the rounding of their corners, the regions an
  annotator draws.
- ``anatomy``: A case made into the solids a lateral lumbar radiograph projects (bodies as
  shells, posterior elements, sacrum, ilium, ribs, psoas, bowel gas, disease, metal) and the
  regions its annotator draws; ``render`` runs the whole image.
- ``physics``: Solids projected into line integrals; the exposure (Beer-Lambert, heel effect,
  scatter, collimation, Poisson noise, detector blur, log-exposure to 12 bits).
- ``writing``: DICOM objects with the identifying tags of an archive, the VIA project and
  ``truth.json``.
- ``annotator``: The demo's annotator: the phantom's VIA project re-keyed to the exported PNGs.
- ``readers``: The demo's readers: each draws the images in their own way.
"""

__all__ = ["anatomy", "annotator", "physics", "plan", "readers", "shapes", "writing"]
