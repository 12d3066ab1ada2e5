"""Regenerate the files of this folder: what the real VIA 2.0.10 writes, drawn in headless Chromium.

Not a test (pytest collects ``test_*.py`` only). Needs git, Debian's ``chromium`` and
``chromium-driver``, and ``selenium`` in the environment (``.venv/bin/pip install
selenium==4.51.0``); VIA itself is taken from a clone of https://github.com/ox-vgg/via at the
tag ``via-2.0.10`` and packed into its single-file ``via.html`` by VIA's own
``scripts/pack_via.py``, in a temporary folder: nothing of VIA is copied here.

    .venv/bin/python tests/data/via_2.0.10/make_fixtures.py --via-git /path/to/via/.git

What it does, as an annotator would (README, "For annotators"):

1. a phantom of 4 images (seed 1, 128 x 320), ``spinepipe anonymize`` and ``spinepipe export
   --via-image-path <tmp>/png`` (the PNGs and ``via_project.json``);
2. opens ``via.html``, *Project > Load* of ``via_project.json`` (the images come from the
   project's default path);
3. on each image, in sorted file-name order, clicks the polygon tool, clicks the vertices of
   :data:`DRAWING` on the region canvas with the mouse, presses Enter, and picks the class in the
   dropdown of VIA's annotation editor;
4. *Project > Save* (named ``via_2.0.10_phantom``), *Annotation > Export Annotations* as csv,
   json and COCO;
5. then draws one more polygon on the last image without picking a class, saves the project as
   ``via_2.0.10_phantom_unset`` and exports it as csv and json;
6. copies the downloads, unmodified, and the PNGs here.

Before copying, it checks that VIA holds exactly the vertices that were clicked (canvas scale 1).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

HERE = Path(__file__).resolve().parent
TAG = "via-2.0.10"
NAME = "via_2.0.10_phantom"

#: per image (sorted file names), the polygons drawn: (class option picked, vertices)
DRAWING: list[list[tuple[str | None, list[tuple[int, int]]]]] = [
    [  # a whole lumbar spine: L1-L5 and the sacrum
        ("lumbar", [(40, 40), (88, 44), (86, 72), (38, 68)]),
        ("lumbar", [(38, 80), (86, 84), (84, 112), (36, 108)]),
        ("lumbar", [(36, 120), (60, 118), (84, 124), (86, 138), (82, 152), (34, 148)]),
        ("lumbar", [(34, 160), (82, 164), (80, 194), (32, 190)]),
        ("lumbar", [(32, 202), (80, 206), (78, 236), (30, 232)]),
        ("sacrum", [(30, 246), (80, 250), (90, 272), (60, 300), (34, 286)]),
    ],
    [  # two vertebrae and a 7-point sacrum
        ("lumbar", [(44, 60), (92, 64), (90, 96), (42, 92)]),
        ("lumbar", [(42, 110), (90, 114), (88, 146), (40, 142)]),
        ("sacrum", [(40, 170), (70, 168), (96, 178), (100, 206), (80, 236), (52, 232),
                    (38, 200)]),
    ],
    [],  # left without regions
    [  # a vertebra and an interbody cage
        ("lumbar", [(30, 100), (80, 96), (84, 130), (34, 134)]),
        ("cage", [(50, 150), (70, 150), (70, 160), (50, 160)]),
    ],
]
#: drawn on the last image after the first save, its class never picked
UNSET = [(20, 200), (60, 200), (60, 240), (20, 240)]

OPTION_TEXT = {"lumbar": "lumbar vertebra (L1-L5)", "sacrum": "sacrum (S1)",
               "cage": "interbody cage"}


def run(cmd: list[str], **kw) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def pack_via(git_dir: Path, tmp: Path) -> tuple[Path, str]:
    commit = run(["git", "--git-dir", str(git_dir), "rev-parse", TAG + "^{commit}"]).strip()
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", commit, "via-2.x.y"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    run([sys.executable, "pack_via.py"], cwd=tmp / "via-2.x.y" / "scripts")
    html = tmp / "via-2.x.y" / "dist" / "via.html"
    assert "var VIA_VERSION      = '2.0.10';" in html.read_text(), "not VIA 2.0.10"
    return html, commit


def phantom_pngs(tmp: Path) -> Path:
    sp = str(Path(sys.executable).parent / "spinepipe")
    none = str(tmp / "no-params.yaml")
    run([sp, "phantom", "-o", str(tmp / "raw"), "--n", "4", "--seed", "1", "--height", "320",
         "--width", "128", "--workers", "1", "--params", none, "-q"])
    run([sp, "anonymize", "-i", str(tmp / "raw" / "dicom"), "-o", str(tmp / "anon"),
         "--private", str(tmp / "private"), "--workers", "1", "--params", none, "-q"])
    run([sp, "export", "-i", str(tmp / "anon"), "-o", str(tmp / "png"), "--via-image-path",
         str(tmp / "png"), "--workers", "1", "--params", none, "-q"])
    pngs = sorted((tmp / "png").glob("*.png"))
    assert len(pngs) == len(DRAWING), pngs
    return tmp / "png"


def browser(downloads: Path, chromedriver: str, binary: str) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1400,1000",
                "--disable-gpu", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "profile.default_content_setting_values.automatic_downloads": 1,
    })
    service = webdriver.ChromeService(executable_path=chromedriver)
    return webdriver.Chrome(options=opts, service=service)


def wait(driver, script: str, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"VIA never reached: {what} ({script})")


def menu(driver, top: str, item: str) -> None:
    """Hover a top menu of VIA's menu bar and click one of its entries."""
    head = driver.find_element(By.XPATH, f"//div[@class='menubar']/ul/li[contains(text(), "
                                         f"'{top}')]")
    entry = head.find_element(By.XPATH, f"./ul/li[normalize-space(text())='{item}']")
    ActionChains(driver).move_to_element(head).pause(0.3).move_to_element(entry).click().perform()
    away = ActionChains(driver)  # leave the menu, which stays open while hovered
    w, h = driver.execute_script("return [innerWidth, innerHeight]")
    away.w3c_actions.pointer_action.move_to_location(w - 5, h - 5)
    away.perform()


def click_at(driver, canvas, x: int, y: int) -> None:
    """A mouse click at image pixel (x, y) of the canvas (VIA shows the image at scale 1)."""
    left, top = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top];", canvas)
    actions = ActionChains(driver)  # VIA rounds the event's offset: the nearest whole pixel
    actions.w3c_actions.pointer_action.move_to_location(round(left + x), round(top + y))
    actions.w3c_actions.pointer_action.click()
    actions.perform()
    time.sleep(0.05)


def draw(driver, cls: str | None, points: list[tuple[int, int]]) -> None:
    canvas = driver.find_element(By.ID, "region_canvas")
    for x, y in points:
        click_at(driver, canvas, x, y)
    canvas.send_keys(Keys.ENTER)
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ESCAPE)
    if cls is not None:  # click into the new region: VIA opens its annotation editor there
        rid = driver.execute_script("return _via_img_metadata[_via_image_id].regions.length - 1")
        click_at(driver, canvas, round(sum(x for x, _ in points) / len(points)),
                 round(sum(y for _, y in points) / len(points)))
        select = wait(driver, f"document.getElementById('class__{rid}')",
                      f"the class dropdown of region {rid}")
        Select(select).select_by_visible_text(OPTION_TEXT[cls])
        body.send_keys(Keys.ESCAPE)
    time.sleep(0.1)


def show_image(driver, index: int, filename: str) -> None:
    driver.find_element(By.ID, f"fl{index}").click()
    wait(driver, f"_via_current_image_loaded && _via_image_index === {index} && "
         f"_via_img_metadata[_via_image_id].filename === {json.dumps(filename)}",
         f"image {filename} shown")
    scale = driver.execute_script("return _via_canvas_scale")
    assert scale == 1, f"canvas scale {scale}: clicks would not land on whole pixels"
    driver.find_element(By.ID, "region_shape_polygon").click()


def save_project(driver, name: str) -> None:
    menu(driver, "Project", "Save")
    field = wait(driver, "document.getElementById('project_name')", "the save dialog")
    field.clear()
    field.send_keys(name)
    driver.find_element(By.ID, "user_input_ok_button").click()


def downloaded(folder: Path, name: str, timeout: float = 20.0) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        f = folder / name
        if f.exists() and not list(folder.glob("*.crdownload")):
            return f
        time.sleep(0.1)
    raise TimeoutError(f"no download {name} in {folder}: {sorted(p.name for p in folder.iterdir())}")


def check_drawing(driver, filenames: list[str], extra: bool) -> None:
    held = driver.execute_script(
        "return _via_image_id_list.map(id => [_via_img_metadata[id].filename, "
        "_via_img_metadata[id].regions.map(r => [r.shape_attributes.all_points_x, "
        "r.shape_attributes.all_points_y, r.region_attributes.class])])")
    by_name = {n: regs for n, regs in held}
    for k, name in enumerate(filenames):
        want = [(c, p) for c, p in DRAWING[k]] + ([(None, UNSET)] if extra and k == 3 else [])
        got = [(c, list(zip(xs, ys))) for xs, ys, c in by_name[name]]
        assert got == [(c, list(p)) for c, p in want], (name, got, want)


def annotate(driver, html: Path, png: Path, downloads: Path) -> list[str]:
    driver.get(html.as_uri())
    wait(driver, "typeof _via_img_metadata !== 'undefined'", "VIA started")
    menu(driver, "Project", "Load")
    driver.find_element(By.ID, "invisible_file_input").send_keys(str(png / "via_project.json"))
    wait(driver, f"_via_image_id_list.length === {len(DRAWING)} && _via_current_image_loaded",
         "the project loaded and its first image shown")
    filenames = driver.execute_script(
        "return _via_image_id_list.map(id => _via_img_metadata[id].filename)")
    order = sorted(filenames)
    for name, regions in zip(order, DRAWING):
        show_image(driver, filenames.index(name), name)
        for cls, points in regions:
            draw(driver, cls, points)
    check_drawing(driver, order, extra=False)
    save_project(driver, NAME)
    downloaded(downloads, NAME + ".json")
    for item, suffix in (("Export Annotations (as csv)", "_csv.csv"),
                         ("Export Annotations (as json)", "_json.json"),
                         ("Export Annotations (COCO format)", "_coco.json")):
        menu(driver, "Annotation", item)
        downloaded(downloads, NAME + suffix)
    show_image(driver, filenames.index(order[3]), order[3])
    draw(driver, None, UNSET)
    check_drawing(driver, order, extra=True)
    save_project(driver, NAME + "_unset")
    downloaded(downloads, NAME + "_unset.json")
    for item, suffix in (("Export Annotations (as csv)", "_csv.csv"),
                         ("Export Annotations (as json)", "_json.json")):
        menu(driver, "Annotation", item)
        downloaded(downloads, NAME + "_unset" + suffix)
    return order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--via-git", type=Path, required=True,
                    help="git directory of a clone of github.com/ox-vgg/via (has tag via-2.0.10)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="via2010_") as t:
        tmp = Path(t)
        html, commit = pack_via(args.via_git, tmp)
        png = phantom_pngs(tmp)
        downloads = tmp / "downloads"
        downloads.mkdir()
        driver = browser(downloads, args.chromedriver, args.chromium)
        try:
            annotate(driver, html, png, downloads)
            version = driver.capabilities.get("browserVersion")
        finally:
            driver.quit()
        for old in list(args.out.glob("*.png")) + list(args.out.glob(NAME + "*")):
            old.unlink()
        for f in sorted(downloads.iterdir()):
            shutil.copyfile(f, args.out / f.name)
        for f in sorted(png.glob("*.png")):
            shutil.copyfile(f, args.out / f.name)
        print(f"VIA {TAG} (commit {commit}, via.html sha256 "
              f"{run(['sha256sum', str(html)]).split()[0]}), Chromium {version}: "
              f"{sorted(p.name for p in downloads.iterdir())} -> {args.out}")


if __name__ == "__main__":
    main()
