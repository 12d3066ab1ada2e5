"""converters.annotations: Annotations: VIA files read and written, regions checked and repaired
into outlines, COCO and masks, QA pictures, the conversion, the patient-grouped split and proposals
back into VIA.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``adjudication``: Adjudication: the images the readers disagree on most, first, and the VIA
  project in which an expert settles them.
- ``agreement``: Inter-reader agreement: the readers measured against each other before any model
  is.
- ``coco``: COCO instances and class masks from polygons.
- ``consensus``: The readers' consensus of one image: one polygon per vertebra from several
  readers' polygons.
- ``convert``: VIA annotations -> COCO instances, class masks, overlap maps, a per-image table and
  QA.
- ``convert_plan``: convert's plan: every VIA file read, every annotated image validated,
  levelled and given its ground truth, and the rows and jobs that follow, before anything is
  written.
- ``masks``: The pictures convert draws per image: the class mask, the overlap map and the QA
  overlay, rendered only for images whose inputs changed, each written under a temporary name and
  moved into place with the others; an image is redone when its polygons, problems, file or this
  drawing code changed.
- ``proposals``: Model proposals for annotators: predicted masks -> VIA polygons, the order in
  which a person should review them, and what the annotators changed (no torch here: the inference
  is :mod:`train.infer.propose`).
- ``qa``: QA pictures for people: overlays of the polygons on their image, and contact sheets.
- ``readers``: Readers: who drew each VIA file, and which polygons are an image's ground truth.
- ``regions``: Regions: a VIA region checked and repaired into an :class:`Outline`, or dropped with
  its :class:`Problem`.
- ``split``: Deterministic, persisted, patient-grouped and stratified splits (DESIGN.md, convention
  6).
- ``via``: VIA (VGG Image Annotator) files read as VIA writes them: every format it saves or
  exports (VIA 1 and 2 projects and annotation JSON, VIA 3 projects, COCO, CSV: :mod:`via_csv
  <converters.annotations.via_csv>`) becomes the same :class:`AnnotatedImage` /
  :class:`AnnotatedRegion` (:func:`read_via`); projects written:
  :mod:`converters.annotations.via_project`.
- ``via_csv``: VIA's CSV export (*Annotation > Export Annotations (as csv)*) read as VIA writes it:
  one row per region (an image without regions: one row with empty region cells), each cell a JSON
  value that VIA built with ``JSON.stringify`` (so a value never set is a bare ``undefined``),
  quoted as VIA quotes it; a field is at most :data:`MAX_CSV_FIELD` characters.
- ``via_project``: VIA projects written: what VIA 2.0.x itself saves with *Project > Save*, so that
  annotators load spinepipe's projects (export's stub, proposals) as their own.
"""

__all__ = ["adjudication", "agreement", "coco", "consensus", "convert", "convert_plan", "masks", "proposals", "qa", "readers", "regions", "split", "via", "via_csv",
           "via_project"]
