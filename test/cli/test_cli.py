"""The ``cass_segment`` contract: files, shapes, dtypes, JSON keys, settings
precedence and errors. Tiny random models, the real pipeline."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cass_ros.cli import segment as cli
from cass_ros.core.config import build_config
from cass_ros.core.prompts import build_prompt_set, parse_prompt_text
from cass_ros.core.segmenter import Segmenter
from cass_ros.core.visualize import legend_panel, palette

REPO = Path(__file__).resolve().parents[2]
OBJECT_KEYS = {"class_id", "label", "presence", "present", "pixel_count", "area_fraction",
               "mean_confidence", "bbox"}


def _image(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (200, 30, 30)  # some structure
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_images")
    cv2.imwrite(str(folder / "first.png"), cv2.cvtColor(_image(0, 70, 90), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "second.jpg"), cv2.cvtColor(_image(1, 64, 64), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def base_args(tiny_weights) -> list[str]:
    clip, dino = tiny_weights
    return ["--set", f"clip_weights={clip}", "--set", f"dino_weights={dino}", "--device", "cpu",
            "--set", "short_side=64", "-q"]


PROMPTS = "cat|kitty, dog; car\nperson|pedestrian"


@pytest.fixture(scope="module")
def run(images, base_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_out")
    rc = cli.main([str(images / "first.png"), str(images / "second.jpg"), "--out", str(out),
                   "--prompts", PROMPTS, "--save-probs", *base_args])
    return rc, out


def test_writes_every_file_with_the_right_shapes(run, images):
    rc, out = run
    assert rc == 0
    for stem, (h, w) in (("first", (70, 90)), ("second", (64, 64))):
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (h, w)
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.dtype == np.uint8 and overlay.shape == (h, w, 3)
        probs = np.load(out / f"{stem}_probs.npy")
        doc = json.loads((out / f"{stem}.json").read_text())
        k = len(doc["class_names"])
        assert probs.dtype == np.float32 and probs.shape == (k, h, w)
        assert labels.max() < k


def test_json_keys_and_consistency_with_the_label_png(run):
    _, out = run
    doc = json.loads((out / "first.json").read_text())
    assert set(doc) == {"image", "size", "class_names", "objects", "prompt_id", "timings_ms"}
    assert doc["image"].endswith("first.png") and doc["size"] == [70, 90]
    assert doc["class_names"][:5] == ["background", "cat", "dog", "car", "person"]
    assert "total" in doc["timings_ms"] and {"clip", "dino", "spectral"} <= set(doc["timings_ms"])
    labels = cv2.imread(str(out / "first_labels.png"), cv2.IMREAD_UNCHANGED)
    assert [o["class_id"] for o in doc["objects"]] == list(range(1, len(doc["class_names"])))
    for obj in doc["objects"]:
        assert set(obj) == OBJECT_KEYS
        mask = labels == obj["class_id"]
        assert obj["pixel_count"] == int(mask.sum())
        assert obj["present"] == bool(mask.any())
        assert obj["area_fraction"] == pytest.approx(mask.mean())
        assert 0.0 <= obj["presence"] <= 1.0
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert obj["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]
        else:
            assert obj["bbox"] == [0, 0, 0, 0]


def test_probs_reproduce_the_labels_and_the_library(run, images, tiny_weights):
    _, out = run
    probs = np.load(out / "first_probs.npy")
    labels = cv2.imread(str(out / "first_labels.png"), cv2.IMREAD_UNCHANGED)
    config = build_config({"clip_weights": tiny_weights[0], "dino_weights": tiny_weights[1],
                           "device": "cpu", "short_side": 64})
    expect = probs.argmax(0)
    expect[probs.max(0) < config.prob_threshold] = 0
    assert np.array_equal(labels, expect)
    # The same pipeline through the library gives the same probabilities.
    seg = Segmenter(config)
    prepared = seg.prepare_prompts(build_prompt_set(parse_prompt_text(PROMPTS),
                                                    config.background_classes))
    rgb = cv2.cvtColor(cv2.imread(str(images / "first.png")), cv2.COLOR_BGR2RGB)
    result = seg.segment([rgb], prepared, return_probs=True)[0]
    np.testing.assert_allclose(result.probs, probs, atol=1e-6)
    # Row 0 is background: the default background names are there.
    assert probs[0].max() > 0


def test_no_background_names_gives_a_zero_row(images, base_args, tmp_path):
    rc = cli.main([str(images / "second.jpg"), "--out", str(tmp_path), "--prompts", "cat, dog",
                   "--set", "background_classes=", "--save-probs", *base_args])
    assert rc == 0
    probs = np.load(tmp_path / "second_probs.npy")
    assert probs.shape[0] == 3 and not probs[0].any()


def test_folder_input_and_unreadable_images(images, base_args, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc = cli.main([str(folder), str(tmp_path / "missing.png"), "--out", str(out),
                   "--prompts", "cat", *base_args])
    assert rc == 1  # failures are reported, the rest still processed
    assert sorted(p.name for p in out.glob("*.json")) == ["first.json", "second.json"]
    assert not (out / "first_probs.npy").exists()  # only with --save-probs


def test_sixteen_bit_labels_above_255_classes(images, base_args, tmp_path):
    names = [f"thing{i}" for i in range(300)]
    rc = cli.main([str(images / "second.jpg"), "--out", str(tmp_path), "--prompts", ", ".join(names),
                   "--set", "background_classes=", *base_args])
    assert rc == 0
    labels = cv2.imread(str(tmp_path / "second_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.shape == (64, 64)


def _config_of(argv: list[str]):
    settings, runtime = cli._settings(cli._parse_args(argv))
    return build_config(settings), runtime


def test_precedence_preset_config_set(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("prob_threshold: 0.3\nshort_side: 448\nmin_pixels: 7\n")
    cfg, runtime = _config_of(["x.png", "--out", "o", "--preset", "ade20k", "--config", str(flat),
                               "--set", "short_side=224", "--device", "cpu"])
    assert cfg.preset == "ade20k" and cfg.slide_crop == 224       # from the preset
    assert cfg.mean_vector_weight == 0.05                          # from the preset
    assert cfg.prob_threshold == 0.3                               # config over preset
    assert cfg.short_side == 224                                   # --set over config
    assert cfg.device == "cpu" and runtime["min_pixels"] == 7


def test_ros_parameters_file_as_config():
    cfg, runtime = _config_of(["x.png", "--out", "o", "--config", str(REPO / "config" / "cass.yaml"),
                               "--set", "attention=vanilla"])
    assert cfg.attention == "vanilla" and cfg.short_side == 336
    assert runtime["color_alpha"] == 0.5


@pytest.mark.parametrize("extra,needle", [
    (["--set", "clip_weights=/nonexistent/clip.pt"], "clip_weights"),
    (["--preset", "kitti"], "preset"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--set", "k_eigen=many"], "k_eigen"),
    (["--device", "gpu"], "device"),
])
def test_clear_errors(images, base_args, tmp_path, capsys, extra, needle):
    rc = cli.main([str(images / "first.png"), "--out", str(tmp_path), "--prompts", "cat",
                   *base_args, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and needle in err


def test_empty_prompts_is_an_error(images, base_args, tmp_path, capsys):
    rc = cli.main([str(images / "first.png"), "--out", str(tmp_path), "--prompts", " ,; |",
                   *base_args])
    assert rc == 2 and "no class names" in capsys.readouterr().err


def test_runs_as_a_program(images, tiny_weights, tmp_path):
    """The way users call it: a separate process, the classes file flag."""
    classes = tmp_path / "classes.txt"
    classes.write_text("cat, kitty\ndog|puppy\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "cass_ros.cli.segment", str(images / "first.png"),
         "--out", str(tmp_path / "o"),
         "--classes-file", str(classes), "--set", f"clip_weights={tiny_weights[0]}",
         "--set", f"dino_weights={tiny_weights[1]}", "--device", "cpu", "--set", "short_side=64"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "o" / "first.json").read_text())
    assert doc["class_names"][:3] == ["background", "cat", "dog"]


def test_set_takes_several_pairs_and_gives_back_inputs(tiny_weights):
    args = cli._parse_args(["--set", "short_side=224", "attention=vanilla", "a.png", "--out", "o",
                            "b.png", "--set", "k_eigen=5"])
    assert args.inputs == ["b.png", "a.png"]
    cfg, _ = _config_of(["b.png", "--out", "o", "--set", "short_side=224", "attention=vanilla",
                         "--set", "k_eigen=5"])
    assert (cfg.short_side, cfg.attention, cfg.k_eigen) == (224, "vanilla", 5)
    with pytest.raises(SystemExit):
        cli._parse_args(["--out", "o", "--set", "short_side=224"])



# ---------------------------------------------------------------- bad inputs among good ones


def _truncated_png(path: Path) -> None:
    ok, buf = cv2.imencode(".png", _image(5, 40, 50))
    assert ok
    path.write_bytes(buf.tobytes()[: buf.size // 2])


BAD_INPUTS = {
    # a header claiming 99999 x 99999 pixels (30 GB decoded) and a few bytes:
    # OpenCV raised cv2.error and the whole run died
    "huge.ppm": (lambda p: p.write_bytes(b"P6\n99999 99999\n255\n\x00\x01\x02"), "99999 x 99999"),
    # under OpenCV's own cap (2^30) but above ours: OpenCV would allocate 2.7 GB
    "big.ppm": (lambda p: p.write_bytes(b"P6\n30000 30000\n255\n\x00\x01\x02"), "30000 x 30000"),
    "truncated.png": (_truncated_png, "truncated or corrupt"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty file"),
    "text.jpg": (lambda p: p.write_text("this is not a JPEG\n"), "not an image"),
    "folder.png": (lambda p: p.mkdir(), "not a regular file"),
}


@pytest.fixture
def error_lines():
    """The ERROR records of the cass_segment logger, as strings. A handler
    of its own rather than caplog: with launch_pytest installed, loggers
    created after its import do not propagate to the root (launch's
    LaunchLogger class), where caplog listens."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("cass_segment")
    logger.addHandler(handler)
    yield lambda: [r.getMessage() for r in records]
    logger.removeHandler(handler)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_is_reported_in_one_line_and_skipped(name, images, base_args, tmp_path,
                                                         error_lines):
    make, reason = BAD_INPUTS[name]
    folder = tmp_path / "in"
    folder.mkdir()
    # good, bad, good in name order: the input after the bad one must still be done
    (folder / "a.png").write_bytes((images / "first.png").read_bytes())
    make(folder / f"b_{name}")
    (folder / "c.jpg").write_bytes((images / "second.jpg").read_bytes())
    out = tmp_path / "out"
    rc = cli.main([str(folder), "--out", str(out), "--prompts", "cat", *base_args])
    assert rc == 1
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "c.json"]
    for stem in ("a", "c"):
        assert (out / f"{stem}_labels.png").is_file() and (out / f"{stem}_overlay.png").is_file()
    assert not list(out.glob("b_*"))
    errors = error_lines()
    assert len(errors) == 1, errors
    assert f"b_{name}" in errors[0] and reason in errors[0] and "\n" not in errors[0]


def test_bad_inputs_as_a_program(images, tiny_weights, tmp_path):
    """Every kind at once, as files and as arguments, in a separate process:
    one line each on stderr, no traceback, the good images done, exit 1."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (make, _) in BAD_INPUTS.items():
        make(folder / name)
    (folder / "good.png").write_bytes((images / "first.png").read_bytes())
    (folder / "notes.txt").write_text("not an input: no image suffix, not reported\n")
    last = tmp_path / "last.jpg"
    last.write_bytes((images / "second.jpg").read_bytes())
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "cass_ros.cli.segment", str(folder / "huge.ppm"), str(folder),
         str(tmp_path / "missing.png"), str(last), "--out", str(out), "--prompts", "cat",
         "--set", f"clip_weights={tiny_weights[0]}", f"dino_weights={tiny_weights[1]}",
         "short_side=64", "--device", "cpu", "-q"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "cv2.error" not in proc.stderr
    assert sorted(p.name for p in out.glob("*.json")) == ["good.json", "last.json"]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    # huge.ppm twice (as an argument and in the folder), the five others, missing.png
    assert len(errors) == len(BAD_INPUTS) + 2, proc.stderr
    assert all(line.startswith("ERROR cass_segment: input ") and line.endswith(": skipped")
               for line in errors), proc.stderr
    # nothing else but the note that the second huge.ppm would be huge_2
    assert [line for line in lines if line not in errors] == [
        "WARNING cass_segment: two inputs are named huge: writing the second as huge_2"]
    assert f"{len(BAD_INPUTS) + 2} input(s) failed" in proc.stdout


# ---------------------------------------------------------------- colour table and legend


@pytest.fixture(scope="module")
def run_no_legend(images, base_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_out_no_legend")
    rc = cli.main([str(images / "first.png"), str(images / "second.jpg"), "--out", str(out),
                   "--prompts", PROMPTS, "--no-legend", *base_args])
    return rc, out


def test_color_table_csv_matches_the_json_and_the_palette(run):
    _, out = run
    doc = json.loads((out / "first.json").read_text())
    with open(out / "color_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["name", "red", "green", "blue", "alpha", "id"]
    assert [r["name"] for r in rows] == doc["class_names"]
    assert [int(r["id"]) for r in rows] == list(range(len(rows)))
    colors = palette(len(rows))
    assert [[int(r[c]) for c in ("red", "green", "blue")] for r in rows] == colors.tolist()
    assert {r["alpha"] for r in rows} == {"255"}
    # one table for the run, not one per image
    assert sorted(p.name for p in out.glob("*.csv")) == ["color_table.csv"]


def _plain_overlay(rgb: np.ndarray, labels: np.ndarray, k: int, alpha: float = 0.5) -> np.ndarray:
    colors = palette(k).astype(float)
    return np.where((labels > 0)[..., None], rgb * (1 - alpha) + colors[labels] * alpha, rgb)


@pytest.mark.parametrize("stem,suffix", [("first", ".png"), ("second", ".jpg")])
def test_legend_only_inside_its_box_and_no_legend_is_the_plain_overlay(run, run_no_legend, images,
                                                                       stem, suffix):
    (rc, out), (rc_plain, out_plain) = run, run_no_legend
    assert rc == rc_plain == 0
    rgb = cv2.cvtColor(cv2.imread(str(images / f"{stem}{suffix}")), cv2.COLOR_BGR2RGB)
    labels = cv2.imread(str(out_plain / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
    names = json.loads((out / f"{stem}.json").read_text())["class_names"]
    with_legend = cv2.cvtColor(cv2.imread(str(out / f"{stem}_overlay.png")), cv2.COLOR_BGR2RGB)
    plain = cv2.cvtColor(cv2.imread(str(out_plain / f"{stem}_overlay.png")), cv2.COLOR_BGR2RGB)
    assert np.abs(plain - _plain_overlay(rgb, labels, len(names))).max() <= 1.0
    panel = legend_panel(names, palette(len(names)), *rgb.shape[:2])
    assert panel is not None
    h, w = panel.keep.shape
    inside = np.zeros(rgb.shape[:2], bool)
    inside[panel.y:panel.y + h, panel.x:panel.x + w] = True
    assert np.array_equal(with_legend[~inside], plain[~inside])
    assert not np.array_equal(with_legend[inside], plain[inside])
    assert (out_plain / "color_table.csv").is_file()  # --no-legend still writes the table


# ---------------------------------------------------------------- several prompt sets


SET_A = "cat|kitty, dog"
SET_B = "car; person|pedestrian, bicycle"
SET_C = "red box"
MODES = {"whole": [], "sliding": ["--set", "slide_crop=32", "slide_stride=20"]}


def _json_without_timings(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert set(doc["timings_ms"]) >= {"total", "read", "write", "clip", "head", "postprocess"}
    del doc["timings_ms"]
    return doc


def assert_same_outputs(got: Path, want: Path) -> None:
    """``got`` holds what ``want`` holds, file by file: images pixel- and
    byte-equal, probabilities equal, JSON equal but for timings_ms."""
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        a, b = got / name, want / name
        if name.endswith(".png"):
            pa, pb = (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (a, b))
            assert pa.dtype == pb.dtype and np.array_equal(pa, pb), name
            assert a.read_bytes() == b.read_bytes(), name
        elif name.endswith(".npy"):
            assert np.array_equal(np.load(a), np.load(b)), name
        elif name.endswith(".json"):
            assert _json_without_timings(a) == _json_without_timings(b), name
        else:
            assert a.read_text() == b.read_text(), name


@pytest.fixture(scope="module", params=sorted(MODES))
def two_sets(request, images, base_args, tmp_path_factory):
    """A two-set run and the two single-set runs, in one mode."""
    root = tmp_path_factory.mktemp(f"cli_sets_{request.param}")
    inputs = [str(images / "first.png"), str(images / "second.jpg")]
    common = [*inputs, "--save-probs", *base_args, *MODES[request.param]]
    rcs = [cli.main(["--out", str(root / "both"), "--prompts", SET_A, "--prompts", SET_B, *common]),
           cli.main(["--out", str(root / "a"), "--prompts", SET_A, *common]),
           cli.main(["--out", str(root / "b"), "--prompts", SET_B, *common])]
    assert rcs == [0, 0, 0]
    return root


def test_two_sets_write_what_two_separate_runs_write(two_sets):
    both = two_sets / "both"
    assert sorted(p.name for p in both.iterdir()) == ["set_01", "set_02", "sets.json"]
    assert_same_outputs(both / "set_01", two_sets / "a")
    assert_same_outputs(both / "set_02", two_sets / "b")
    # the files are really there and differ between the sets
    assert sorted(p.name for p in (both / "set_01").iterdir()) == [
        "color_table.csv", "first.json", "first_labels.png", "first_overlay.png",
        "first_probs.npy", "second.json", "second_labels.png", "second_overlay.png",
        "second_probs.npy"]
    assert (np.load(both / "set_01" / "first_probs.npy").shape[0]
            != np.load(both / "set_02" / "first_probs.npy").shape[0])


def test_sets_json_names_each_folders_prompts(two_sets):
    index = json.loads((two_sets / "both" / "sets.json").read_text())
    assert index == {"sets": [
        {"folder": "set_01", "prompts": SET_A, "class_names": ["background", "cat", "dog"]},
        {"folder": "set_02", "prompts": SET_B,
         "class_names": ["background", "car", "person", "bicycle"]}]}


def test_a_queries_file_is_several_prompts(images, base_args, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text(f"# sets for the dock camera\n\n{SET_B}\n   # indented comment\n{SET_C}\n\n")
    common = [str(images / "second.jpg"), "--save-probs", *base_args]
    assert cli.main(["--out", str(tmp_path / "q"), "--prompts", SET_A, "--queries", str(queries),
                     *common]) == 0
    assert cli.main(["--out", str(tmp_path / "p"), "--prompts", SET_A, "--prompts", SET_B,
                     "--prompts", SET_C, *common]) == 0
    index = json.loads((tmp_path / "q" / "sets.json").read_text())["sets"]
    assert [(s["folder"], s["prompts"]) for s in index] == [
        ("set_01", SET_A), ("set_02", SET_B), ("set_03", SET_C)]
    for folder in ("set_01", "set_02", "set_03"):
        assert_same_outputs(tmp_path / "q" / folder, tmp_path / "p" / folder)


def test_one_set_in_a_queries_file_writes_out_as_before(images, base_args, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text(f"# one set\n{SET_A}\n")
    common = [str(images / "first.png"), *base_args]
    assert cli.main(["--out", str(tmp_path / "q"), "--queries", str(queries), *common]) == 0
    assert cli.main(["--out", str(tmp_path / "p"), "--prompts", SET_A, *common]) == 0
    assert not (tmp_path / "q" / "sets.json").exists()
    assert_same_outputs(tmp_path / "q", tmp_path / "p")


@pytest.fixture
def forward_counts(monkeypatch):
    """Calls of the real segmenter's halves and of its two trunks."""
    from cass_ros.core.vit_features import ClipVision, DinoKeys

    counts = {"encode": 0, "segment": 0, "clip": 0, "dino": 0}

    def counting(cls, name: str, key: str) -> None:
        real = getattr(cls, name)

        def wrapper(self, *a, **kw):
            counts[key] += 1
            return real(self, *a, **kw)

        monkeypatch.setattr(cls, name, wrapper)

    counting(Segmenter, "encode", "encode")
    counting(Segmenter, "segment", "segment")
    counting(ClipVision, "tokens_before_last", "clip")
    counting(DinoKeys, "last_keys", "dino")
    return counts


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_models_run_once_per_image_for_n_sets(images, base_args, tmp_path, forward_counts,
                                                   mode):
    inputs = [str(images / "first.png"), str(images / "second.jpg")]
    common = [*inputs, *base_args, *MODES[mode]]
    assert cli.main(["--out", str(tmp_path / "one"), "--prompts", SET_A, *common]) == 0
    single = dict(forward_counts)
    # warm_up is not called by cass_segment: one segment call per image
    assert single["segment"] == 2 and single["dino"] >= 2 and single["clip"] >= single["dino"]
    if mode == "whole":     # one crop per image (sliding: more crop sizes, the global pass)
        assert single["clip"] == single["dino"] == 2
    forward_counts.update(dict.fromkeys(forward_counts, 0))
    assert cli.main(["--out", str(tmp_path / "three"), "--prompts", SET_A, "--prompts", SET_B,
                     "--prompts", SET_C, *common]) == 0
    # one encode per image, and the trunks run as often as for one set
    assert forward_counts == {"encode": 2, "segment": 0, "clip": single["clip"],
                              "dino": single["dino"]}


def _queries_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "queries.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize("make_args,needle", [
    (lambda d: ["--queries", str(d / "missing.txt")], "cannot read --queries file"),
    (lambda d: ["--queries", str(d)], "cannot read --queries file"),
    (lambda d: ["--queries", _queries_file(d, b"cat\n\xff\xfe dog\n")], "cannot read --queries"),
    (lambda d: ["--queries", _queries_file(d, "# only comments\n\n   \n")], "holds no prompt set"),
    (lambda d: ["--queries", _queries_file(d, "cat, dog\n# c\n ,; |\n")],
     "queries.txt line 3: no class names"),
    (lambda d: ["--prompts", "cat", "--prompts", " , "], "--prompts #2: no class names"),
    (lambda d: ["--queries", _queries_file(d, "cat\n"), "--classes-file",
                _queries_file(d, "dog\n")], "--classes-file"),
    (lambda d: ["--prompts", "cat", "--prompts", "dog", "--classes-file",
                _queries_file(d, "dog\n")], "--classes-file"),
], ids=["missing", "folder", "not_utf8", "no_set", "bad_line", "bad_prompts", "classes_file",
        "classes_file_prompts"])
def test_bad_prompt_sets_are_one_error_line(images, base_args, tmp_path, capsys, make_args,
                                            needle):
    out = tmp_path / "out"
    rc = cli.main([str(images / "first.png"), "--out", str(out), *base_args,
                   *make_args(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cass_segment: error: "), err
    assert needle in err, err
    assert not out.exists()     # refused before anything is written


def _sets_of(argv: list[str]) -> list[cli.QuerySet]:
    args = cli._parse_args(argv)
    settings, _ = cli._settings(args)
    return cli.prompt_sets(args, build_config(settings))


def test_the_prompt_flags_and_the_settings_prompts(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("tree\nroad\n")
    queries = _queries_file(tmp_path, "car\nbus|coach\n")
    base = ["x.png", "--out", "o"]
    # one --prompts still wins over --classes-file, as before
    sets = _sets_of([*base, "--prompts", "cat", "--classes-file", str(classes)])
    assert [s.prompt_set.class_names for s in sets] == [["background", "cat"]]
    # without prompt flags: the classes file, or the preset's classes
    (only,) = _sets_of([*base, "--classes-file", str(classes)])
    assert only.text is None and only.prompt_set.class_names == ["background", "tree", "road"]
    assert len(_sets_of([*base, "--preset", "ade20k"])[0].prompt_set.classes) == 150
    # --queries replaces a preset's classes as --prompts does (the preset's
    # other settings stay)
    sets = _sets_of([*base, "--preset", "ade20k", "--queries", queries])
    assert [s.prompt_set.class_names for s in sets] == [["background", "car"],
                                                         ["background", "bus"]]
    assert sets[1].prompt_set.classes == (("bus", "coach"),)


def test_set_folder_names_sort_in_set_order():
    assert cli.set_folder_names(3) == ["set_01", "set_02", "set_03"]
    names = cli.set_folder_names(120)
    assert names[0] == "set_001" and names[-1] == "set_120" and sorted(names) == names


# ------------------------------------------------------- --instances, --track


# tiny random models label everything background at the default threshold
EVERY_PIXEL = ["--set", "background_classes=", "prob_threshold=0", "instance_min_pixels=2"]


@pytest.fixture(scope="module")
def run_instances(images, base_args, tmp_path_factory):
    """A run with --instances and the same run without."""
    outs = [tmp_path_factory.mktemp("cli_instances"), tmp_path_factory.mktemp("cli_plain")]
    rcs = [cli.main([str(images / "first.png"), str(images / "second.jpg"), "--out", str(out),
                     "--prompts", PROMPTS, "--save-probs", *flag, *EVERY_PIXEL, *base_args])
           for out, flag in zip(outs, (["--instances"], []))]
    return rcs, outs


def test_instances_png_and_json_match_find_instances(run_instances):
    from cass_ros.core.objects.instances import InstanceParams, find_instances

    rcs, (out, plain_out) = run_instances
    assert rcs == [0, 0]
    found = 0
    for stem in ("first", "second"):
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        png = cv2.imread(str(out / f"{stem}_instances.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == labels.shape
        probs = np.load(out / f"{stem}_probs.npy")
        own = np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0]
        inst = find_instances(labels, InstanceParams(min_pixels=2), own)
        np.testing.assert_array_equal(png, inst.index)
        doc = json.loads((out / f"{stem}.json").read_text())
        assert list(doc) == ["image", "size", "class_names", "objects", "prompt_id",
                             "timings_ms", "instances"]
        assert [e["id"] for e in doc["instances"]] == list(range(1, inst.count + 1))
        for e in doc["instances"]:
            i = e["id"]
            assert set(e) == {"id", "class_id", "label", "pixel_count", "bbox",
                              "mean_confidence"}
            assert e["class_id"] == inst.class_ids[i - 1]
            assert e["label"] == doc["class_names"][e["class_id"]]
            assert e["pixel_count"] == inst.pixel_counts[i - 1] == int((png == i).sum())
            assert e["bbox"] == inst.boxes[i - 1].tolist()
            assert e["mean_confidence"] == pytest.approx(float(inst.mean_confidence[i - 1]),
                                                         abs=1e-5)
        found += inst.count
        # the existing keys and files are what a run without --instances writes
        plain = _json_without_timings(plain_out / f"{stem}.json")
        with_inst = _json_without_timings(out / f"{stem}.json")
        del with_inst["instances"]
        assert with_inst == plain
        assert np.array_equal(labels, cv2.imread(str(plain_out / f"{stem}_labels.png"),
                                                 cv2.IMREAD_UNCHANGED))
    assert found >= 2
    assert not list(plain_out.glob("*_instances.png"))   # only with the flag


def test_track_keeps_ids_over_identical_images(images, base_args, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (frames / name).write_bytes((images / "first.png").read_bytes())
    out = tmp_path / "out"
    rc = cli.main([str(frames), "--out", str(out), "--prompts", PROMPTS, "--track",
                   *EVERY_PIXEL, *base_args])
    assert rc == 0
    docs = [json.loads((out / f"{s}.json").read_text())["instances"] for s in "abc"]
    pngs = [cv2.imread(str(out / f"{s}_instances.png"), cv2.IMREAD_UNCHANGED) for s in "abc"]
    assert docs[0] and docs[0] == docs[1] == docs[2]
    assert [e["id"] for e in docs[0]] == list(range(1, len(docs[0]) + 1))
    assert np.array_equal(pngs[0], pngs[1]) and np.array_equal(pngs[0], pngs[2])
    assert pngs[0].dtype == np.uint16


def test_instance_and_track_settings_are_checked(images, base_args, tmp_path, capsys):
    for key, bad in (("track_min_iou", "2"), ("instance_min_pixels", "-3"),
                     ("track_min_hits", "many")):
        rc = cli.main([str(images / "first.png"), "--out", str(tmp_path / "o"), "--prompts",
                       "cat", "--instances", "--set", f"{key}={bad}", *base_args])
        assert rc == 2
        err = capsys.readouterr().err
        assert err.startswith("cass_segment: error:") and key in err


# ------------------------------------------------------------------ --features


@pytest.fixture(scope="module", params=sorted(MODES))
def run_features(request, images, base_args, tmp_path_factory):
    """In one mode: a run with --features --instances, the same run without
    --features, and a two-set run with --features --instances."""
    root = tmp_path_factory.mktemp(f"cli_features_{request.param}")
    common = [str(images / "first.png"), str(images / "second.jpg"), "--save-probs",
              "--instances", *EVERY_PIXEL, *base_args, *MODES[request.param]]
    rcs = [cli.main(["--out", str(root / "features"), "--prompts", PROMPTS, "--features",
                     *common]),
           cli.main(["--out", str(root / "plain"), "--prompts", PROMPTS, *common]),
           cli.main(["--out", str(root / "sets"), "--prompts", PROMPTS, "--prompts", SET_B,
                     "--features", *common])]
    assert rcs == [0, 0, 0]
    return root, MODES[request.param]


def _library_dense(tiny_weights, images, stem: str, mode: list[str]):
    from cass_ros.core.queries.dense import dense_features

    from cass_ros.core.config import coerce

    settings = {"clip_weights": tiny_weights[0], "dino_weights": tiny_weights[1],
                "device": "cpu", "short_side": 64}
    settings.update((k, coerce(k, v)) for k, v in (i.split("=", 1) for i in mode if "=" in i))
    seg = Segmenter(build_config(settings))
    path = next(images.glob(f"{stem}.*"))
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return seg, dense_features(seg.encode([rgb]), seg.clip.patch)[0], rgb.shape[:2]


def test_features_files_are_the_librarys_dense_features(run_features, images, tiny_weights):
    from cass_ros.core.queries.dense import Placement

    root, mode = run_features
    out = root / "features"
    for stem in ("first", "second"):
        seg, dense, size = _library_dense(tiny_weights, images, stem, mode)
        grid = np.load(out / f"{stem}_features.npy")
        assert grid.dtype == np.float16 and grid.ndim == 3
        assert np.array_equal(grid, dense.patches.half().numpy())
        doc = json.loads((out / f"{stem}_features.json").read_text())
        assert list(doc) == ["image", "file", "shape", "dtype", "model", "placement",
                             "image_embedding"]
        assert doc["file"] == f"{stem}_features.npy" and doc["dtype"] == "float16"
        assert doc["shape"] == list(grid.shape) and doc["model"] == seg.models.clip_id
        assert doc["placement"] == Placement(size, grid.shape[:2]).to_json()
        assert doc["placement"]["image_size"] == list(size)
        np.testing.assert_allclose(doc["image_embedding"], dense.image.numpy(), atol=1e-7)


def test_instance_embeddings_are_the_pooled_features(run_features, images, tiny_weights):
    from cass_ros.core.objects.instances import InstanceParams, find_instances
    from cass_ros.core.queries.pooling import pool_regions

    root, mode = run_features
    out = root / "features"
    found = 0
    for stem in ("first", "second"):
        _, dense, _ = _library_dense(tiny_weights, images, stem, mode)
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        inst = find_instances(labels, InstanceParams(min_pixels=2))
        pooled = pool_regions(dense, inst.index, inst.count, inst.boxes).numpy()
        entries = json.loads((out / f"{stem}.json").read_text())["instances"]
        assert len(entries) == inst.count
        for e in entries:
            assert list(e)[-1] == "embedding" and len(e["embedding"]) == pooled.shape[1]
            np.testing.assert_allclose(e["embedding"], pooled[e["id"] - 1], atol=1e-6)
            assert np.linalg.norm(e["embedding"]) == pytest.approx(1.0, abs=1e-5)
        found += inst.count
    assert found >= 2


def test_features_add_files_and_keys_only(run_features):
    """The contract: --features adds files and keys; everything else is what
    a run without it writes."""
    root, _ = run_features
    with_f, plain = root / "features", root / "plain"
    added = {p.name for p in with_f.iterdir()} - {p.name for p in plain.iterdir()}
    assert added == {f"{s}_features.{x}" for s in ("first", "second") for x in ("npy", "json")}
    assert not list(plain.glob("*_features.*"))
    for stem in ("first", "second"):
        for name in (f"{stem}_labels.png", f"{stem}_instances.png", f"{stem}_overlay.png"):
            assert (with_f / name).read_bytes() == (plain / name).read_bytes(), name
        assert np.array_equal(np.load(with_f / f"{stem}_probs.npy"),
                              np.load(plain / f"{stem}_probs.npy"))
        doc = _json_without_timings(with_f / f"{stem}.json")
        for e in doc["instances"]:
            del e["embedding"]
        assert doc == _json_without_timings(plain / f"{stem}.json")


def test_each_set_folder_gets_the_features(run_features):
    root, _ = run_features
    for stem in ("first", "second"):
        single = np.load(root / "features" / f"{stem}_features.npy")
        for folder in ("set_01", "set_02"):
            assert np.array_equal(np.load(root / "sets" / folder / f"{stem}_features.npy"),
                                  single)
            assert ((root / "sets" / folder / f"{stem}_features.json").read_text()
                    == (root / "features" / f"{stem}_features.json").read_text())
        # set 1 is the single run's prompt set: the same instances and embeddings
        assert (json.loads((root / "sets" / "set_01" / f"{stem}.json").read_text())["instances"]
                == json.loads((root / "features" / f"{stem}.json").read_text())["instances"])


def test_tracked_instances_carry_their_embeddings(images, base_args, tmp_path):
    """--track --features: instances are listed once their track is
    published (track_min_hits 2: from the second frame), each with its
    embedding, the pooled embedding of that frame's instance."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a.png", "b.png"):
        (frames / name).write_bytes((images / "first.png").read_bytes())
    out = tmp_path / "out"
    rc = cli.main([str(frames), "--out", str(out), "--prompts", PROMPTS, "--track", "--features",
                   "--set", "track_min_hits=2", *EVERY_PIXEL, *base_args])
    assert rc == 0
    first, second = (json.loads((out / f"{s}.json").read_text())["instances"] for s in "ab")
    assert first == []                      # not yet published (track_min_hits 2)
    untracked = tmp_path / "untracked"
    assert cli.main([str(frames / "b.png"), "--out", str(untracked), "--prompts", PROMPTS,
                     "--instances", "--features", *EVERY_PIXEL, *base_args]) == 0
    alone = json.loads((untracked / "b.json").read_text())["instances"]
    assert second and [e["embedding"] for e in second] == [e["embedding"] for e in alone]
