"""Statistics (train/report/stats.py) against SciPy, statsmodels and scikit-posthocs called
directly, and the report (train/report/build.py) on evaluation folders written by
train/evaluation/evaluate.py's own
writer."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as st
from statsmodels.sandbox.stats.multicomp import MultiComparison
from statsmodels.stats.multicomp import pairwise_tukeyhsd

from train.report import stats
from train.evaluation.evaluate import write_scores
from train.evaluation.metrics import METRICS
from train.models import display_name
from train.report.build import ReportConfig, build_report
from train.report.tables import STUDY_TABLE1

MODELS = ["mask_rcnn", "yolact", "unet", "pspnet", "deeplabv3"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for k, model in enumerate(MODELS):
        for i in range(30):
            rows.append({"model": model, "file_name": f"img{i:02d}.png",
                         "mean_iou": float(np.clip(rng.normal(0.80 + 0.02 * k, 0.04), 0, 1)),
                         "pixel_accuracy": float(rng.beta(40 + 5 * k, 2)),
                         "recognized": int(rng.random() < 0.5 + 0.1 * k)})
    return pd.DataFrame(rows)


def _groups(df, col):
    return [df.loc[df["model"] == m, col].to_numpy() for m in MODELS]


def test_kruskal_matches_scipy(frame):
    res = stats.kruskal(frame, ["mean_iou", "recognized"], alpha=0.05).set_index("metric")
    for col in ("mean_iou", "recognized"):
        h, p = st.kruskal(*_groups(frame, col))
        assert res.loc[col, "H"] == pytest.approx(h) and res.loc[col, "p"] == pytest.approx(p)
        assert res.loc[col, "epsilon_squared"] == pytest.approx(h / (len(frame) - 1))
        assert res.loc[col, "reject"] == (p < 0.05)


def test_pairwise_matches_statsmodels_allpairtest_and_dunn(frame):
    res = stats.pairwise(frame, "recognized", alpha=0.05)
    table, _, _ = MultiComparison(frame["recognized"], frame["model"], group_order=MODELS) \
        .allpairtest(st.ttest_ind, method="holm")
    ref = pd.DataFrame(table.data[1:], columns=table.data[0])
    assert list(zip(res["model_1"], res["model_2"])) == list(zip(ref["group1"], ref["group2"]))
    assert res["stat"].to_numpy() == pytest.approx(ref["stat"].astype(float).to_numpy(), abs=1e-3)
    assert res["pval_corr"].to_numpy() == pytest.approx(ref["pval_corr"].astype(float).to_numpy(), abs=1e-3)
    assert list(res["reject"]) == list(ref["reject"])
    dunn = sp.posthoc_dunn(frame, val_col="recognized", group_col="model", p_adjust="holm")
    for _, r in res.iterrows():
        assert r["dunn_pval_corr"] == pytest.approx(dunn.loc[r["model_1"], r["model_2"]])
    a, b = _groups(frame, "recognized")[:2]
    u = st.mannwhitneyu(a, b).statistic
    assert res.loc[0, "cliffs_delta"] == pytest.approx(2 * u / (len(a) * len(b)) - 1)


def test_shapiro_and_tukey_match(frame):
    sh = stats.shapiro(frame, ["mean_iou"], alpha=0.05)
    for m, x in zip(MODELS, _groups(frame, "mean_iou")):
        w, p = st.shapiro(x)
        row = sh[sh["model"] == m].iloc[0]
        assert row["W"] == pytest.approx(w) and row["p"] == pytest.approx(p)
    tk = stats.tukey(frame, "mean_iou", alpha=0.05)
    assert sh["normal"].all() and tk is not None
    ref = pairwise_tukeyhsd(frame["mean_iou"], frame["model"], alpha=0.05)
    assert tk["p-adj"].astype(float).to_numpy() == pytest.approx(ref.pvalues, abs=1e-3)
    # pixel accuracy near 1 (beta): not normal in some model -> Tukey does not apply
    assert stats.tukey(frame.assign(x=frame["recognized"]), "x", 0.05) is None


def test_degenerate_data_has_notes_not_errors():
    df = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4, "v": [1.0] * 8})
    k = stats.kruskal(df, ["v"], 0.05).iloc[0]
    assert np.isnan(k["H"]) and k["p"] == 1.0 and "identical" in k["note"]
    pw = stats.pairwise(df, "v", 0.05).iloc[0]
    assert pw["pval"] == 1.0 and not pw["reject"] and pw["note"]
    assert stats.shapiro(df, ["v"], 0.05)["note"].str.contains("identical").all()


def test_report_from_evaluation_folders(tmp_path, frame):
    import cv2
    images, masks = tmp_path / "png", tmp_path / "masks"
    for d in (images, masks):
        d.mkdir()
    gt = np.zeros((40, 20), np.uint8)
    gt[5:15, 5:15], gt[25:35, 5:15] = 1, 2
    for name in frame["file_name"].unique():
        cv2.imwrite(str(images / name), np.full((40, 20), 128, np.uint8))
        cv2.imwrite(str(masks / name), gt)
    rng = np.random.default_rng(0)
    for model in MODELS:
        g = frame[frame["model"] == model]
        rows = [{"file_name": r["file_name"], "predicted": 1,
                 **{m: float(np.clip(r["mean_iou"] + rng.normal(0, 0.01), 0, 1)) for m in METRICS},
                 "recognized": int(r["recognized"]), "composite": int(r["recognized"]) * int(i % 2),
                 "n_gt": 6, "n_pred": 6, "n_matched": 6, "missed": "", "shifted": "",
                 "lost_overlaps": "" if i % 2 else "L4/L5", "false_overlaps": "",
                 "gt_overlaps": i % 3, "overlaps_apart": (i % 3) * (i % 2), "implants": i % 2}
                for i, (_, r) in enumerate(g.iterrows())]
        out = tmp_path / "eval" / model / "fold0"
        (out / "predictions").mkdir(parents=True)
        for r in rows:
            cv2.imwrite(str(out / "predictions" / r["file_name"]), gt)
        write_scores(out, rows, {"model": model, "fold": 0, "level_recognition": {"L1": 1.0},
                                 "pooled": {"mean_iou": 0.9}})
    metrics = build_report(tmp_path / "eval", tmp_path / "reports", images=images, masks=masks,
                           cfg=ReportConfig(), models=MODELS)
    assert list(metrics) == MODELS
    saved = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert saved == metrics
    for model in MODELS:
        g = frame[frame["model"] == model]
        assert saved[model]["recognition_rate"] == pytest.approx(g["recognized"].mean())
        assert set(saved[model]) == {*METRICS, "recognition_rate", "composite_recognition_rate",
                                     "composite_recognition_rate_overlaps"}
        # images with overlaps: i % 3 > 0; composite: recognized on odd i
        comp = [int(r["recognized"]) * (i % 2) for i, (_, r) in enumerate(g.iterrows())]
        on_overlaps = [c for i, c in enumerate(comp) if i % 3]
        assert saved[model]["composite_recognition_rate_overlaps"] == pytest.approx(
            np.mean(on_overlaps))
    sub = pd.read_csv(tmp_path / "reports" / "tables" / "subgroups_values.csv")
    assert set(sub["subgroup"]) == {"overlaps", "no overlaps", "implants", "no implants"}
    assert (sub.groupby("model")["images"].sum() == 2 * 30).all()   # each split covers all
    one = sub[(sub["model"] == "unet") & (sub["subgroup"] == "implants")].iloc[0]
    assert one["images"] == 15 and one["composite"] == one["recognized"]   # implants: odd i
    ov = sub[(sub["model"] == "unet") & (sub["subgroup"] == "overlaps")].iloc[0]
    # pairs: i % 3 summed over i < 30 = 30; kept apart on odd i only = 15
    assert (ov["images"], ov["overlap_pairs"], ov["overlap_pairs_apart"]) == (20, 30, 15)
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "Table 1" in html and "Table 4" in html and html.count("data:image/png;base64,") >= 12
    t1 = pd.read_csv(tmp_path / "reports" / "tables" / "table1_values.csv", index_col=0)
    assert list(t1.index) == MODELS
    dens = pd.read_csv(tmp_path / "reports" / "plots" / "density_mean_iou.csv")
    assert list(dens.columns) == ["value", *MODELS]
    for model in MODELS:   # each density integrates to about 1 over its range
        assert np.trapezoid(dens[model], dens["value"]) == pytest.approx(1, abs=0.15)
    for name in ("table2_kruskal_wallis", "table3_recognition_rate",
                 "table4_composite_recognition_rate", "shapiro_wilk"):
        assert (tmp_path / "reports" / "tables" / f"{name}.md").read_text().startswith("|")
    assert (tmp_path / "reports" / "figures" / "overlays" / "unet_worst.png").is_file()
    # this run beside the study's Table 1 (as the paper prints it: Mask R-CNN's mean IoU
    # 85.87 %, pixel accuracy 96.27 %, PSPNet's recognition 43 %): the study's values, this
    # run's, their difference
    assert (STUDY_TABLE1["mask_rcnn"]["mean_iou"], STUDY_TABLE1["mask_rcnn"]["pixel_accuracy"],
            STUDY_TABLE1["pspnet"]["recognition_rate"]) == (0.8587, 0.9627, 0.43)
    comp = pd.read_csv(tmp_path / "reports" / "tables" / "study_comparison.csv",
                       index_col=0)
    for model in MODELS:
        name, r = display_name(model), t1.loc[model]
        for key, label in (("mean_iou_mean", "Mean IoU"), ("recognition_rate", "Recognition rate")):
            study = STUDY_TABLE1[model][key.removesuffix("_mean")]
            assert comp.loc[label, f"{name}: study"] == pytest.approx(100 * study, abs=0.05)
            assert comp.loc[label, f"{name}: this run"] == pytest.approx(100 * r[key], abs=0.05)
            assert comp.loc[label, f"{name}: difference"] == pytest.approx(
                100 * (r[key] - study), abs=0.1)
    assert "beside the study" in html
    # the first four test images, each beside its ground truth: 8 panels of the masks' width
    sheet = cv2.imread(str(tmp_path / "reports" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 8 * gt.shape[1] * sheet.shape[0] / gt.shape[0]
    for name in _report_outs():   # every output dvc.yaml declares for the stage
        assert (tmp_path / "reports" / name).exists(), name
    notes = (tmp_path / "reports" / "tables" / "notes.md").read_text()
    assert "exact McNemar" in notes and "Only" not in notes      # 30 images: no warning
    assert "Small test set" not in html and "Subgroups" in html
    build_report(tmp_path / "eval", tmp_path / "small", images=images, masks=masks,
                 cfg=ReportConfig(min_images=31), models=MODELS)
    assert "Only 30 test images per model" in (tmp_path / "small" / "report.html").read_text()


def test_overlap_finding_compares_the_best_of_each_family():
    from statsmodels.stats.contingency_tables import mcnemar

    from train.report.tables import overlap_finding, subgroups
    rows = []
    for i in range(12):
        for model, comp in (("mask_rcnn", i < 10), ("yolact", i < 4), ("unet", i < 3),
                            ("pspnet", i < 5)):
            rows.append({"model": model, "fold": 0, "file_name": f"{i}.png", "recognized": 1,
                         "composite": int(comp), "gt_overlaps": 1, "implants": 0,
                         "overlaps_apart": int(comp)})
    df = pd.DataFrame(rows)
    text = overlap_finding(df, subgroups(df), 0.05)
    p = mcnemar([[5, 5], [0, 2]], exact=True).pvalue      # Mask R-CNN 10/12 vs PSPNet 5/12
    assert "Mask R-CNN) reaches 83.33 %" in text and "PSPNet) 41.67 %" in text
    assert "finding holds" in text and f"p = {p:.3g}" in text
    assert "kept apart: 10/12 against 5/12" in text
    no_overlaps = df.assign(gt_overlaps=0)
    assert "cannot be checked" in overlap_finding(no_overlaps, subgroups(no_overlaps), 0.05)


def test_a_report_of_one_model_has_no_pairwise_tests_and_no_traceback(tmp_path, frame):
    """One model (a first training, a curator's smoke run): Tukey's HSD needs two groups."""
    import cv2
    images, masks = tmp_path / "png", tmp_path / "masks"
    for d in (images, masks):
        d.mkdir()
    g = frame[frame["model"] == "unet"]
    gt = np.zeros((40, 20), np.uint8)
    gt[5:15, 5:15] = 1
    for name in g["file_name"]:
        cv2.imwrite(str(images / name), np.full((40, 20), 128, np.uint8))
        cv2.imwrite(str(masks / name), gt)
    rows = [{"file_name": r["file_name"], "predicted": 1, **{m: float(r["mean_iou"]) for m in METRICS},
             "recognized": int(r["recognized"]), "composite": int(r["recognized"]), "n_gt": 6,
             "n_pred": 6, "n_matched": 6, "missed": "", "shifted": "", "lost_overlaps": "",
             "false_overlaps": "", "gt_overlaps": 0, "overlaps_apart": 0, "implants": 0}
            for _, r in g.iterrows()]
    out = tmp_path / "eval" / "unet" / "fold0"
    out.mkdir(parents=True)
    write_scores(out, rows, {"model": "unet", "fold": 0, "level_recognition": {"L1": 1.0},
                             "pooled": {"mean_iou": 0.9}})
    metrics = build_report(tmp_path / "eval", tmp_path / "reports", images=images, masks=masks,
                           cfg=ReportConfig(), models=["unet"])
    assert list(metrics) == ["unet"]
    assert metrics["unet"]["mean_iou"] == pytest.approx(g["mean_iou"].mean())
    assert not list((tmp_path / "reports" / "tables").glob("tukey_*"))
    assert (tmp_path / "reports" / "report.html").stat().st_size > 0


def _report_outs() -> list[str]:
    """The report stage's outputs in dvc.yaml, relative to reports/."""
    import yaml
    from pathlib import Path as _Path

    stage = yaml.safe_load((_Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]["report"]
    names = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
    return [n.removeprefix("reports/") for n in names]


def test_the_waiting_report_writes_every_output_dvc_expects(tmp_path):
    """Before the first annotation the report still writes each of its DVC outputs (DVC fails
    a stage whose output is missing): the contact sheet says why it is empty."""
    from train.report.build import write_waiting_report

    write_waiting_report(tmp_path / "reports", "no annotations yet")
    outs = _report_outs()
    assert "contact_sheet.png" in outs
    for name in outs:
        assert (tmp_path / "reports" / name).exists(), name
