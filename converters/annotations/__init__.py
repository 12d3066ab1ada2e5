"""converters.annotations: Annotations: VIA files read and written, regions repaired into
instances, COCO and masks, QA pictures, the conversion, the patient-grouped split and proposals
back into VIA.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``coco``: COCO instances and class masks from polygons.
- ``convert``: VIA annotations -> COCO instances, class masks, overlap maps, a per-image table and
  QA.
- ``proposals``: Model proposals for annotators: predicted masks -> VIA polygons, the order in
  which a person should review them, and what the annotators changed (no torch here: the inference
  is :mod:`train.infer.propose`).
- ``qa``: QA pictures for people: overlays of the polygons on their image, and contact sheets.
- ``regions``: Regions: a VIA region checked and repaired into an :class:`Instance`, or dropped
  with its :class:`Problem`.
- ``split``: Deterministic, persisted, patient-grouped and stratified splits (DESIGN.md, convention
  6).
- ``via``: VIA (VGG Image Annotator) project files.
"""

__all__ = ["coco", "convert", "proposals", "qa", "regions", "split", "via"]
