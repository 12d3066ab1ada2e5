"""converters.dicom: DICOM in and out: one reader, the PACS (retrieve and store), de-identification
with its private ledger, pixels to display grayscale, the PNG export, DICOM SEG and SR.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``anonymize``: DICOM de-identification of a whole archive (``spinepipe anonymize``; DESIGN.md,
  convention 13).
- ``burned_in``: Burned-in text in radiographs: looked for by OCR, never trusted to a flag.
- ``deid_engine``: The de-identification engine: the action table
  (:mod:`converters.dicom.deid_table`) applied to every element of one object, in place, with its
  audit.
- ``deid_pixels``: Pixel data in de-identification: text markers in encapsulated frames, the checks
  before anything is decoded, the pixels OCR reads and the regions it blanks.
- ``deid_table``: The de-identification profile: the PS3.15 Annex E action table, its options and
  value checks (DESIGN.md, convention 13; the engine that applies it:
  :mod:`converters.dicom.deid_engine`).
- ``export``: Anonymized DICOM -> grayscale PNG for annotators and models, with provenance and a
  VIA stub.
- ``ledger``: The private folder: secret salt, patient identities and the pseudonym ledger.
- ``pacs``: The association with a PACS (pynetdicom), shared by retrieval
  (:mod:`converters.dicom.retrieve`, ``spinepipe retrieve``) and the way back
  (:mod:`converters.dicom.store`, ``spinepipe store``): the connection settings
  (:class:`RetrieveConfig`, params.yaml section ``retrieve``: host, port, AE titles, TLS), one
  association per study or query (:class:`Pacs`), deadlines and the PACS's statuses in words.
- ``pixels``: DICOM pixel data to display-ready grayscale, the study's export ("histogram
  equalization").
- ``read``: Reading DICOM files: the one reader every stage uses (retrieve's store, anonymize,
  export, to-seg, SEG reading), so a damaged file is the same one-line error everywhere.
- ``retrieve``: Retrieval from a PACS (``spinepipe retrieve``): C-FIND the studies, C-GET or C-MOVE
  their instances, each object verified before a byte of it is written; the association itself:
  :mod:`converters.dicom.pacs`.
- ``seg``: DICOM Segmentation objects (highdicom) of predicted vertebrae, on their source
  radiographs.
- ``sr``: DICOM Measurement Reports (Comprehensive SR, template TID 1500, highdicom) of one
  radiograph's clinical measures, beside its SEG.
- ``sr_codes``: What the Measurement Reports say, as codes: every coded concept and the measurement
  groups (the ``measures.csv`` columns each reports, the endplates they were measured between).
- ``store``: The way back to the PACS: C-STORE of spinepipe's results (``spinepipe store``),
  resumable: a state file records per PACS what was stored with which content, so a re-run sends
  only what is new or changed.
"""

__all__ = ["anonymize", "burned_in", "deid_engine", "deid_pixels", "deid_table", "export",
           "ledger", "pacs", "pixels", "read", "retrieve", "seg", "sr", "sr_codes", "store"]
