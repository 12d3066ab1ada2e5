"""Decoded training images kept on disk (train/fit/image_cache.py, issue 27): the arrays MMCV's
LoadImageFromFile gives, each PNG decoded once, a new entry when the PNG changes, a broken or
planted entry never trusted, and a real training DataLoader (worker processes) giving the same
samples with the cache as without it."""
from __future__ import annotations

import io
import os
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from converters.annotations.convert import ConvertConfig, convert
from converters.annotations.split import SplitConfig, write_splits
from converters.phantom.writing import PhantomConfig, generate
from conftest import ingest_chain


def _png(path: Path, seed: int, shape=(60, 40)) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return img


def _load(step, path: Path) -> dict:
    return step.transform({"img_path": str(path)})


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.npy"))


@pytest.fixture
def loaders(tmp_path):
    from mmcv.transforms import LoadImageFromFile

    from train.fit.image_cache import CachedLoadImageFromFile
    cache = tmp_path / "cache"
    return (LoadImageFromFile(color_type="grayscale"),
            CachedLoadImageFromFile(cache_dir=str(cache), color_type="grayscale"), cache)


def test_the_cache_gives_what_mmcv_decodes_and_reads_it_back(tmp_path, loaders):
    plain, cached, cache = loaders
    png = tmp_path / "a.png"
    img = _png(png, 1)
    first, expected = _load(cached, png), _load(plain, png)
    for out in (first, expected):
        assert np.array_equal(out["img"], img) and out["img"].dtype == np.uint8
    assert first["img_shape"] == first["ori_shape"] == expected["img_shape"] == (60, 40)
    (entry,) = _entries(cache)
    assert np.array_equal(np.load(entry), img)
    # the second load reads the entry, not the PNG: an entry changed behind its back shows
    np.save(entry, np.zeros_like(img))
    again = _load(cached, png)
    assert not again["img"].any() and again["img"].flags.writeable
    assert _entries(cache) == [entry]


def test_a_png_rewritten_in_place_with_its_old_time_gets_a_new_entry(tmp_path, loaders):
    """``cp -p`` / ``rsync -t --inplace`` over the same file: same path, inode, size and
    modification time; the change time tells."""
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    _png(png, 1)
    _load(cached, png)
    st = png.stat()
    newer = np.random.default_rng(2).integers(0, 256, (60, 40), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", newer)
    fresh = encoded.tobytes()
    if len(fresh) != st.st_size:            # the same size, so only the ctime differs
        pytest.fail("test PNGs of different sizes")  # (random bytes: PNG stores them whole)
    time.sleep(0.01)
    with open(png, "r+b") as f:
        f.write(fresh)
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert png.stat().st_ino == st.st_ino and png.stat().st_mtime_ns == st.st_mtime_ns
    assert np.array_equal(_load(cached, png)["img"], newer)


def test_a_temporary_name_a_killed_process_left_goes_an_hour_later(tmp_path, loaders):
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    _png(png, 1)
    (cache / "ab").mkdir(parents=True)
    old, young = cache / "ab" / ".x.npy.1234.sp-tmp", cache / "ab" / ".y.npy.5678.sp-tmp"
    for f in (old, young):
        f.write_bytes(b"half an entry")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    _load(cached, png)                      # the process's first write
    assert not old.exists() and young.exists()


def test_a_png_written_again_gets_a_new_entry(tmp_path, loaders):
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    _png(png, 1)
    _load(cached, png)
    newer = _png(png, 2)
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a later export
    assert np.array_equal(_load(cached, png)["img"], newer)
    assert len(_entries(cache)) == 2


def test_other_loader_arguments_get_their_own_entries(tmp_path, loaders):
    from train.fit.image_cache import CachedLoadImageFromFile
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    img = _png(png, 1)
    colour = CachedLoadImageFromFile(cache_dir=str(cache), color_type="color")
    assert _load(cached, png)["img"].shape == (60, 40)
    out = _load(colour, png)["img"]
    assert out.shape == (60, 40, 3) and np.array_equal(out[..., 0], img)
    assert len(_entries(cache)) == 2


@pytest.mark.parametrize("damage", ["truncated", "not npy", "pickle", "link", "folder",
                                    "fifo", "huge header", "structured", "float64",
                                    "colour for grey", "float32 for uint8", "trailing bytes"])
def test_a_broken_or_planted_entry_is_decoded_again_and_replaced(tmp_path, loaders, damage):
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    img = _png(png, 1)
    _load(cached, png)
    (entry,) = _entries(cache)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full_like(img, 7))
    before = outside.read_bytes()
    if damage == "truncated":               # a full disk, a killed copy
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "not npy":
        entry.write_bytes(b"\x89PNG not an array")
    elif damage == "pickle":                # numpy's object arrays are pickles: never loaded
        np.save(entry, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "link":                  # a link to another array: not followed
        entry.unlink()
        entry.symlink_to(outside)
    elif damage == "folder":
        entry.unlink()
        entry.mkdir()
    elif damage == "fifo":                  # never waited on
        entry.unlink()
        os.mkfifo(entry)
    elif damage == "huge header":           # a header claiming 10 TB: not believed
        head = np.lib.format.header_data_from_array_1_0(img)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {**head, "shape": (10**13,)})
        entry.write_bytes(buf.getvalue() + b"\0" * 100)
    elif damage == "structured":
        np.save(entry, np.zeros(img.shape, dtype=[("a", "u1"), ("b", "f8")]))
    elif damage == "float64":
        np.save(entry, img.astype(np.float64))
    elif damage == "colour for grey":
        np.save(entry, np.dstack([img] * 3))
    elif damage == "float32 for uint8":
        np.save(entry, img.astype(np.float32))
    else:                                   # a whole array and more: not one array
        entry.write_bytes(entry.read_bytes() + b"\0" * 16)
    if damage == "folder":                  # no file replaces a folder: this process goes
        assert np.array_equal(_load(cached, png)["img"], img)   # on without the cache
        entry.rmdir()
        cached = type(cached)(cache_dir=str(cache), color_type="grayscale")   # the next run
    assert np.array_equal(_load(cached, png)["img"], img)
    assert entry.is_file() and not entry.is_symlink() and np.array_equal(np.load(entry), img)
    assert outside.read_bytes() == before
    assert not [p for p in cache.rglob("*") if ".sp-tmp" in p.name]


def test_a_folder_that_cannot_hold_entries_is_skipped_not_fatal(tmp_path, loaders,
                                                               monkeypatch):
    """A link planted for an entry's folder (to an array an attacker prepared under the
    entry's name) is neither read nor written through; the image comes from the PNG, the
    reason is said once, and nothing outside changes."""
    _, cached, cache = loaders
    png = tmp_path / "a.png"
    img = _png(png, 1)
    name = cached._entry(str(png))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    np.save(elsewhere / Path(name).name, np.full_like(img, 9))
    before = (elsewhere / Path(name).name).read_bytes()
    cache.mkdir()
    (cache / name.split("/")[0]).symlink_to(elsewhere, target_is_directory=True)
    import train.fit.image_cache as module
    said, log = [], module.print_log     # what the run's log gets (mmengine's logger keeps
    monkeypatch.setattr(module, "print_log",  # the stream it started with: read it here)
                        lambda msg, **kw: (said.append(msg), log(msg, **kw)))
    for _ in range(2):
        assert np.array_equal(_load(cached, png)["img"], img)
    assert (elsewhere / Path(name).name).read_bytes() == before
    assert sorted(p.name for p in elsewhere.iterdir()) == [Path(name).name]
    assert len(said) == 1 and "not written, images decoded every epoch" in said[0], said


def test_a_missing_file_fails_as_mmcv_says(tmp_path, loaders):
    plain, cached, cache = loaders
    for step in (plain, cached):
        with pytest.raises(FileNotFoundError):
            _load(step, tmp_path / "gone.png")
    assert _entries(cache) == []


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Eight phantom radiographs through the real chain, split; their train params."""
    from pipeline.params import load_section
    from train.fit.runner import TrainConfig

    root = tmp_path_factory.mktemp("project")
    generate(PhantomConfig(n=8, seed=4, height=240, width=96, burned_in_share=0), root / "raw",
             workers=1)
    ingest_chain(root / "raw", root)
    convert([root / "via.json"], root / "png", root / "processed", ConvertConfig(qa=False))
    write_splits(root / "processed", root / "splits", SplitConfig(k=2, max_test_fraction=0.15))
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {
        "preset": "tiny", "images": str(root / "png"), "splits": str(root / "splits"),
        "masks": str(root / "processed" / "masks"),
        "presets": {"tiny": {"img_scale": [96, 240],
                             "augment": [{"type": "RandomGamma", "p": 0.0}]}}}}))
    return root, load_section(TrainConfig, "train", root / "params.yaml")


def _cached(cfg, cache):
    return replace(cfg, presets={"tiny": replace(cfg.presets["tiny"], image_cache=str(cache))})


@pytest.mark.parametrize("where, said", [("png/cache", "is inside"), (".", "holds"),
                                         ("runs/unet/cache", "is inside"),
                                         ("processed", "holds"),
                                         ("data/processed/c", "is inside"),
                                         ("reports/c", "is inside"), ("models", "is inside"),
                                         ("params.yaml", "is a file, not a folder")])
def test_a_cache_among_the_data_or_the_run_is_refused(project, where, said, monkeypatch):
    """Entries among the exported PNGs or in any folder DVC's stages write (in a project: a
    dvc.yaml where the run starts) would change a DVC output, in the run folder they would be
    stored with the model: refused with one line naming the key."""
    from converters.core.errors import InvalidConfigError
    from train.fit.runner import prepare_run

    root, cfg = project
    monkeypatch.chdir(root)
    (root / "dvc.yaml").write_text("stages: {}\n")
    try:
        with pytest.raises(InvalidConfigError,
                           match=rf"^train.presets.tiny.image_cache .* {said}"):
            prepare_run("unet", 0, _cached(cfg, where), root / "runs" / "unet")
    finally:
        (root / "dvc.yaml").unlink()
    assert not (root / "png" / "cache").exists() and not (root / "data").exists()


def test_a_home_relative_cache_is_the_home_folder(project, monkeypatch, tmp_path):
    from train.fit.runner import prepare_run

    root, cfg = project
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(root)
    leaf = prepare_run("unet", 0, _cached(cfg, "~/.cache/spine"), root / "runs" / "unet")
    assert leaf.train_dataloader.dataset.pipeline[0]["cache_dir"] == \
        str((tmp_path / "home" / ".cache" / "spine").resolve())
    assert not (root / "~").exists()


def test_a_leaf_config_keeps_train_and_val_images_and_a_dataloader_gives_the_same(project,
                                                                                   tmp_path):
    """prepare_run with a preset's ``image_cache``: the training and validation pipelines load
    through the cache (the test pipeline as before); a DataLoader of two worker processes gives
    the same samples as the plain pipeline, and each image is decoded into one entry."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    from torch.utils.data import DataLoader

    from train.fit.run_config import step_type
    from train.fit.runner import prepare_run

    root, cfg = project
    cache = tmp_path / "cache"
    with_cache = _cached(cfg, cache)
    for model in ("mask_rcnn", "unet"):
        plain = prepare_run(model, 0, cfg, tmp_path / "runs" / model)
        leaf = prepare_run(model, 0, with_cache, tmp_path / "runs" / f"{model}-cached")
        for loader, kind in (("train_dataloader", "CachedLoadImageFromFile"),
                             ("val_dataloader", "CachedLoadImageFromFile"),
                             ("test_dataloader", "LoadImageFromFile")):
            steps = [step_type(t) for t in leaf[loader].dataset.pipeline]
            assert steps[0] == kind, (model, loader, steps)
        assert leaf.train_dataloader.dataset.pipeline[0]["cache_dir"] == str(cache.resolve())
        assert "train.fit.image_cache" in leaf.custom_imports["imports"]
        assert "image_cache" not in plain.get("custom_imports", {}).get("imports", [""])[0]
        import_modules_from_strings(**leaf.custom_imports)
        init_default_scope(leaf.default_scope)
        samples = {}
        for name, config in (("plain", plain), ("cached", leaf)):
            config.train_dataloader.dataset.pipeline = [  # no random steps: comparable
                t for t in config.train_dataloader.dataset.pipeline
                if step_type(t) not in ("RandomFlip", "RandomCrop", "Albu", "GrayAlbu")]
            dataset = DATASETS.build(config.train_dataloader.dataset)
            batches = [DataLoader(dataset, batch_size=2, num_workers=2,
                                  collate_fn=pseudo_collate) for _ in range(2)]
            samples[name] = [[x.numpy() for x in b["inputs"]] for dl in batches for b in dl]
        assert len(samples["plain"]) == len(samples["cached"]) > 0
        for a, b in zip(samples["plain"], samples["cached"]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    pngs = {p.name for p in (root / "png").iterdir() if p.suffix == ".png"}
    used = len(set(json_names(root / "splits")) & pngs)
    assert 0 < len(_entries(cache)) == used     # one entry per image, both models sharing them


def json_names(splits: Path) -> list[str]:
    """The PNG file names of fold 0's training images."""
    import json
    data = json.loads((splits / "fold0" / "train.json").read_text())
    return [Path(i["file_name"]).name for i in data["images"]]
