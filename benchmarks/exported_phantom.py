"""The benchmarks' shared input: phantom radiographs through anonymize and export, as the
pipeline makes them (``bench_convert.py``, ``bench_agreement.py``)."""
from __future__ import annotations

from pathlib import Path

from converters.dicom.anonymize import anonymize_tree
from converters.dicom.deid_table import AnonymizeConfig
from converters.dicom.export import ExportConfig, export_tree
from converters.dicom.ledger import load_ledger, load_or_create_salt, prepare_private
from converters.phantom.annotator import exported_pngs
from converters.phantom.writing import PhantomConfig, generate


def exported_phantom(tmp: Path, n: int, height: int, width: int, cores: int,
                     seed: int = 4) -> dict[str, tuple[str, int]]:
    """``n`` phantom images (no burned-in names) under ``tmp/raw``, anonymized into
    ``tmp/anon`` and exported to ``tmp/png``; returns original SOP Instance UID -> (PNG name,
    PNG bytes), what ``annotations_for_export`` takes."""
    generate(PhantomConfig(n=n, seed=seed, height=height, width=width, burned_in_share=0),
             tmp / "raw", workers=cores)
    priv = prepare_private(tmp / "private")
    anonymize_tree(tmp / "raw" / "dicom", tmp / "anon", priv, load_or_create_salt(priv),
                   AnonymizeConfig(), workers=cores)
    export_tree(tmp / "anon", tmp / "png", ExportConfig(), workers=cores)
    return exported_pngs(tmp / "png", load_ledger(priv)["instances"])
