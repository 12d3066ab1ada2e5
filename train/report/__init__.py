"""train.report: The study's report: statistics between models, tables, figures, the HTML page, the
build.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``build``: The study's report from the evaluations of every model x fold
  (:mod:`train.evaluation.evaluate`): :func:`build_report` writes everything below; the tables are
  :mod:`train.report.tables`, the figures :mod:`train.report.figures`, the page
  :mod:`train.report.html`.
- ``claim``: The CLAIM checklist (2020, 42 items) answered from the records, or left to the
  authors.
- ``figures``: The report's figures (:mod:`train.report.build`), each returned as PNG bytes: the
  density of the four pixel metrics per model (the paper's Figure 4), box plots, a Bland-Altman
  panel of the lordosis per model, and the best / worst example overlays (Figure 5: the prediction
  filled, lumbar red, sacrum blue; the ground truth outlined in green).
- ``html``: report.html (:mod:`train.report.build`): one self-contained page, its tables as HTML,
  its figures embedded as PNG data URIs (nothing to fetch: the page opens offline and can be mailed
  as is).
- ``humans``: Humans vs models: every model beside the readers' own disagreement, on the same
  test images.
- ``stats``: The study's statistics between models, on per-image values (one value per test image
  and fold; recognition rates as 0 / 1 per image), with SciPy, statsmodels and scikit-posthocs.
- ``study``: The study writes itself up (issue 26): ``reports/study/methods.md``,
  ``dataset_card.md`` and ``model_cards/<model>.md``, every number read from the pipeline's own
  records (the methods text); ``study_cards``: the model cards and the dataset card;
  ``study_facts``: the facts they use, gathered from the records; ``study_runs``: a trained
  run's facts from its folder (config read as data, log, metrics, checkpoint).
- ``tables``: The report's tables (:mod:`train.report.build`): the evaluations read back, Table 1
  (mean and SD per model, recognition rates with Wilson 95 % intervals), the subgroups and the
  study's overlap finding checked, the clinical measures' agreement, and the renderers of a table
  as Markdown cells.
"""

__all__ = ["build", "claim", "figures", "html", "humans", "stats", "study", "study_cards", "study_facts", "study_runs", "tables"]
