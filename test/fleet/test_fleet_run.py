"""cass_fleet on a local Ray of two CPUs, tiny random weights
(docs/ros-interface.md, cass_fleet): four bags of the sample scene with
other topics and prompt messages, one of them cut short by a "crash", and
a folder that is no bag. Outputs equal cass_bag's, the manifest says what
happened to each bag, exit status 1 for the bad one; resume after an
interruption, a changed setting refused, --retry-failed; a chunked bag
equals the unsplit run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fleet_helpers import (assert_close, assert_same_bag, bag_order, cut_copy, labels_equal, plain,
                           start_ray, write_variant)

from cass_ros.bag import io as bag_io
from cass_ros.bag import tool as bag_tool
from cass_ros.cli import fleet as fleet_cli
from cass_ros.fleet import runner

pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    import ray

    temp = start_ray()
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, sample_bag_module):
    """The inputs: root/site_a/{front (mcap), rear (sqlite3, another
    topic)}, root/site_b/{stereo (two cameras), crashed (cut short, no
    metadata)}, root/site_b/notes (no bag); given as @list.txt (site_a),
    a bag, a folder searched, and the non-bag folder."""
    base = tmp_path_factory.mktemp("fleet")
    sample = sample_bag_module.write_sample_bag(base / "sample", frames=6).path
    root = base / "root"
    (root / "site_a").mkdir(parents=True)
    (root / "site_b").mkdir()
    write_variant(sample, root / "site_a" / "front", frames=4, prompt_after=1,
                  prompt_text="car|vehicle, sun")
    write_variant(sample, root / "site_a" / "rear", frames=3, cameras=("rear",), prompt_after=0,
                  prompt_text="house, roof, wheel", storage="sqlite3")
    write_variant(sample, root / "site_b" / "stereo", frames=2, cameras=("left", "right"),
                  prompt_after=0, prompt_text="sky, tree")
    whole = write_variant(sample, base / "whole", frames=6, prompt_after=2, prompt_text="road, car")
    cut_copy(whole, root / "site_b" / "crashed")
    (root / "site_b" / "notes").mkdir()
    (root / "site_b" / "notes" / "README.txt").write_text("not a bag\n")
    (base / "list.txt").write_text("# site A\nroot/site_a\n")
    inputs = [f"@{base / 'list.txt'}", str(root / "site_b" / "stereo"),
              str(root / "site_b" / "crashed"), str(root / "site_b" / "notes")]
    return {"base": base, "root": root, "inputs": inputs,
            "good": ["site_a/front", "site_a/rear", "site_b/stereo", "site_b/crashed"]}


def _run(capsys, inputs, out, params, *more) -> tuple[int, str]:
    code = fleet_cli.main([*map(str, inputs), "--out", str(out), "--params-file", str(params),
                           "--no-progress", *map(str, more)])
    return code, capsys.readouterr()


def _manifest(out: Path) -> dict:
    return json.loads((out / "fleet.json").read_text())


def _bags(out: Path) -> dict[str, dict]:
    return {b["output"]: b for b in _manifest(out)["bags"]}


STABLE = ("input", "output", "status", "reason", "truncated", "recovered_messages",
          "recovered_frames", "frames", "frames_in", "topics", "prompt_ids", "chunks", "counts")


@pytest.fixture(scope="module")
def full_run(fleet, bag_params_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    code = fleet_cli.main([*fleet["inputs"], "--out", str(out), "--params-file",
                           str(bag_params_file), "--no-progress"])
    return code, out


def test_exit_status_and_manifest(full_run, fleet):
    code, out = full_run
    assert code == 1                                   # the folder that is no bag
    doc = _manifest(out)
    assert doc["format"] == 1 and doc["state"] == "finished" and doc["finished"]
    assert doc["settings_hash"] and doc["fingerprint"]["parameters"]["short_side"] == 224
    assert "device" not in doc["fingerprint"]["parameters"]
    bags = _bags(out)
    assert set(bags) == {*fleet["good"], "site_b/notes"}
    notes = bags["site_b/notes"]
    assert notes["status"] == "failed" and "\n" not in notes["reason"]
    assert "not a rosbag2 directory" in notes["reason"]
    assert not (out / "site_b" / "notes").exists()
    for name in fleet["good"]:
        b = bags[name]
        assert b["status"] == "done" and "reason" not in b, b
        assert b["input"] == str(fleet["root"] / name)
        assert b["frames"] == b["frames_in"] > 0 and b["seconds"] > 0 and b["frames_per_second"]
        assert (out / name / "metadata.yaml").is_file()
    assert bags["site_a/front"]["frames"] == 4 and bags["site_a/front"]["prompt_ids"] == [1, 2]
    assert bags["site_a/rear"]["topics"] == [
        {"topic": "/rear/image_raw", "camera": "rear", "type": bag_io.IMAGE}]
    assert [t["camera"] for t in bags["site_b/stereo"]["topics"]] == ["left", "right"]
    assert bags["site_b/stereo"]["frames"] == 4
    crashed = bags["site_b/crashed"]
    assert crashed["truncated"] is True
    assert 0 < crashed["recovered_frames"] == crashed["frames"] < 6
    assert crashed["recovered_messages"] > crashed["recovered_frames"]
    assert bags["site_a/front"]["truncated"] is False
    assert not (out / ".fleet_tmp").exists()


@pytest.mark.arithmetic
def test_outputs_equal_cass_bag(full_run, fleet, bag_params_file, tmp_path):
    _, out = full_run
    for name in fleet["good"]:
        ref = tmp_path / name
        bag_tool.run(bag_tool.BagToolOptions(input_bag=fleet["root"] / name, out=ref,
                                             params_file=bag_params_file, progress=False))
        assert assert_same_bag(out / name, ref) > 0, name
        assert bag_order(out / name) == bag_order(ref), name


@pytest.mark.arithmetic
def test_interrupted_run_resumes_to_the_same_end(full_run, fleet, bag_params_file, tmp_path,
                                                 capsys, monkeypatch):
    """Stopped (as by Ctrl-C) after two bags ended: the manifest says so and
    holds no bag as done that is not; the same command then ends with the
    outputs and the manifest of one whole run."""
    _, whole = full_run
    out = tmp_path / "out"
    real = runner.run_fleet

    def stopping(fo, manifest):
        fo.stop_after = 2
        return real(fo, manifest)

    monkeypatch.setattr(runner, "run_fleet", stopping)
    code, cap = _run(capsys, fleet["inputs"], out, bag_params_file)
    assert code == 130, cap.err
    assert "interrupted" in cap.err
    doc = _manifest(out)
    assert doc["state"] == "interrupted" and doc["finished"] is None
    statuses = {k: b["status"] for k, b in _bags(out).items()}
    assert sum(s in ("done", "failed") for s in statuses.values()) >= 2
    assert "pending" in statuses.values() or "running" in statuses.values()
    for name, status in statuses.items():
        assert (out / name).exists() == (status == "done"), (name, status)
    assert not (out / ".fleet_tmp").exists()
    monkeypatch.setattr(runner, "run_fleet", real)
    code, cap = _run(capsys, fleet["inputs"], out, bag_params_file)
    assert code == 1, cap.err
    assert _manifest(out)["state"] == "finished"
    got, want = _bags(out), _bags(whole)
    assert list(got) == list(want)                     # the same bags in the same order
    for name in want:
        assert {k: got[name].get(k) for k in STABLE} == {k: want[name].get(k) for k in STABLE}
    for name in fleet["good"]:
        assert_same_bag(out / name, whole / name)
    # a third run has nothing left to do: it skips the done ones, the failed one stays
    code, cap = _run(capsys, fleet["inputs"], out, bag_params_file)
    assert code == 1 and "4 done, 1 failed, 0 left (this run: 0 done, 0 failed, 5 skipped)" \
        in cap.out


def test_a_changed_setting_is_refused(full_run, fleet, bag_params_file, capsys):
    _, out = full_run
    before = (out / "fleet.json").read_text()
    code, cap = _run(capsys, fleet["inputs"], out, bag_params_file, "--set", "min_pixels=5",
                     "--no-color")
    assert code == 2
    (line,) = cap.err.strip().splitlines()
    assert line.startswith("cass_fleet: error: ") and "other settings" in line
    assert "outputs.color" in line and "parameters.min_pixels" in line
    assert (out / "fleet.json").read_text() == before
    # a setting that changes nothing computed (device) is not part of it
    code, cap = _run(capsys, fleet["inputs"], out, bag_params_file, "--set", "device=cpu")
    assert code == 1 and "5 skipped" in cap.out


def test_retry_failed(fleet, sample_bag_module, bag_params_file, tmp_path, capsys):
    """A failed bag stays failed (exit 1) until --retry-failed runs it again."""
    good = shutil.copytree(fleet["root"] / "site_a" / "rear", tmp_path / "in" / "rear")
    broken = tmp_path / "in" / "later"
    broken.mkdir()
    (broken / "bag.mcap").write_bytes(b"not an mcap file")
    inputs, out = [good, broken], tmp_path / "out"
    code, cap = _run(capsys, inputs, out, bag_params_file)
    assert code == 1 and _bags(out)["later"]["status"] == "failed"
    shutil.rmtree(broken)
    sample_bag_module.write_sample_bag(broken, frames=2)   # the bag is there now
    code, cap = _run(capsys, inputs, out, bag_params_file)
    assert code == 1 and _bags(out)["later"]["status"] == "failed"  # not retried
    code, cap = _run(capsys, inputs, out, bag_params_file, "--retry-failed")
    assert code == 0, cap.err
    bags = _bags(out)
    assert bags["later"]["status"] == "done" and "reason" not in bags["later"]
    assert bags["later"]["frames"] == 2 and (out / "later" / "metadata.yaml").is_file()
    assert "(this run: 1 done, 0 failed, 1 skipped)" in cap.out


@pytest.mark.arithmetic
def test_a_chunked_bag_equals_the_unsplit_run(fleet, sample_bag_module, bag_params_file,
                                              tmp_path, capsys):
    """Six frames, a prompt message after the third, chunks of two frames on
    two workers, the input copied and a summary: the same output bag, in the
    same order, as one piece."""
    sample = fleet["base"] / "sample"
    bag = write_variant(sample, tmp_path / "in" / "long", frames=6, prompt_after=2,
                        prompt_text="car, road|street")
    flags = ["--copy-input", "--summary", "jsonl", "--workers", "2"]
    code, cap = _run(capsys, [bag], tmp_path / "whole", bag_params_file, *flags)
    assert code == 0, cap.err
    code, cap = _run(capsys, [bag], tmp_path / "split", bag_params_file, *flags,
                     "--chunk-frames", "2")
    assert code == 0, cap.err
    whole, split = tmp_path / "whole" / "long", tmp_path / "split" / "long"
    assert _bags(tmp_path / "split")["long"]["chunks"] == 3
    assert _bags(tmp_path / "whole")["long"]["chunks"] == 1
    assert assert_same_bag(split, whole) > 6 * 4
    assert bag_order(split) == bag_order(whole)
    topics = {t for t, _ in bag_order(split)}
    assert "/camera/image_raw" in topics and "/cass/prompts" in topics   # the copies
    rows = [[plain(json.loads(line), ()) for line in (p / "summary.jsonl").read_text().splitlines()]
            for p in (split, whole)]
    exact = labels_equal(split, whole)
    for r in rows:
        for row in r:
            row.pop("timings_ms")
            if not exact:  # a near-tied pixel flipped: what counts pixels moves with it
                for obj in row["objects"]:
                    for key in ("pixel_count", "area_fraction", "bbox", "present"):
                        obj.pop(key)
    assert len(rows[0]) == len(rows[1]) == 6
    assert_close(rows[0], rows[1], "summary.jsonl")
    assert [r["prompt_id"] for r in rows[0]] == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("setting", ["instances=true", "temporal_smoothing=0.5",
                                     "temporal_present_on_frames=3"])
def test_chunking_is_refused_with_state_across_frames(fleet, bag_params_file, tmp_path, capsys,
                                                      setting):
    code, cap = _run(capsys, [fleet["root"] / "site_a"], tmp_path / "out", bag_params_file,
                     "--set", setting, "--chunk-frames", "2")
    assert code == 2
    (line,) = cap.err.strip().splitlines()
    assert line.startswith("cass_fleet: error: --chunk-frames: ") and "chunks" in line
    assert not (tmp_path / "out").exists()
