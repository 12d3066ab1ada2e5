"""spinepipe's stage modules and the ``spinepipe`` command line.

Each module here is thin (DESIGN.md, convention 1): it parses arguments, loads its
params.yaml section through :mod:`pipeline.params`, calls one library function from
``converters/`` or ``train/`` and reports.
"""
