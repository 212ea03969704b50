"""``python -m univg.data list|prepare``: a fake local Hub folder stands in for the Hub (no network)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from univg.data.prepare import DATASETS, list_datasets, prepare

ROOT = Path(__file__).resolve().parents[1]


class FakeHub:
    """A local folder laid out as ``<repo_id>/<files>``; ``download`` mimics ``snapshot_download``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[dict] = []

    def download(self, repo_id: str, repo_type: str, local_dir: str, allow_patterns=None) -> str:  # noqa: ANN001
        self.calls.append({"repo_id": repo_id, "repo_type": repo_type, "allow_patterns": allow_patterns})
        repo = self.folder / repo_id
        if not repo.is_dir():
            raise OSError(f"Cannot reach the Hub for {repo_id} (offline)")
        for f in repo.rglob("*"):
            rel = f.relative_to(repo).as_posix()
            if f.is_file() and (
                allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns)
            ):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(local_dir) / rel)
        return local_dir


def mig_records(n: int) -> list[dict]:
    images = [f"./MIG-Bench/images/common/{k}.jpg" for k in range(3)]
    return [
        {
            "task": "common_object",
            "images": images,
            "question": "These images share one object in common. Locate this object in the 2th image. ",
            "answer": [0.1, 0.2, 0.5, 0.6],
            "additional_info": "",
            "need_format": True,
        }
        for _ in range(n)
    ]


def fake_mig_repo(hub: Path, n: int, with_images: int) -> None:
    repo = hub / "Michael4933" / "MIG-Bench"
    repo.mkdir(parents=True)
    (repo / "MIG_data.json").write_text(json.dumps(mig_records(n)))
    with zipfile.ZipFile(repo / "images.zip", "w") as z:  # the images ship as an archive
        for k in range(with_images):
            path = repo / f"{k}.jpg"
            Image.new("RGB", (32, 24)).save(path)
            z.write(path, f"images/common/{k}.jpg")
            path.unlink()


def config_data_paths(config: Path) -> dict[str, str]:
    """The ``test_file`` and ``image_root`` an eval config reads by default."""
    args = yaml.safe_load(config.read_text())["data"]["init_args"]
    return {"test_file": args["test_file"], "image_root": args["image_root"]}


def test_prepare_mig_bench_from_the_hub_lays_out_what_the_eval_config_reads(tmp_path, monkeypatch, capsys):
    from univg.data.readers import read_samples

    hub = FakeHub(tmp_path / "hub")
    fake_mig_repo(hub.folder, 4295, with_images=3)
    assert prepare("mig_bench", tmp_path / "data", download=hub.download)
    assert hub.calls == [{"repo_id": "Michael4933/MIG-Bench", "repo_type": "dataset", "allow_patterns": None}]
    out = capsys.readouterr().out
    assert "4,295 records (expected 4,295), 4,295 samples; images: 3 of 3 found" in out
    assert "mig_bench: ready" in out
    # the config's default paths (relative to the repository root, under data/) now resolve
    monkeypatch.chdir(tmp_path)
    paths = config_data_paths(ROOT / "configs/eval/mig_bench.yaml")
    samples = read_samples(paths["test_file"], "mig_bench", image_root=paths["image_root"])
    assert len(samples) == 4295 and all(Path(p).is_file() for p in samples[0].images)


def test_counts_and_missing_images_are_reported_not_hidden(tmp_path, capsys):
    hub = FakeHub(tmp_path / "hub")
    fake_mig_repo(hub.folder, 10, with_images=1)
    assert not prepare("mig_bench", tmp_path / "data", download=hub.download)
    out = capsys.readouterr().out
    assert "10 records (expected 4,295) MISMATCH" in out
    assert "images: 1 of 3 found, 2 missing (first: " in out and "common/1.jpg" in out
    assert "mig_bench: NOT ready" in out


def test_offline_says_in_one_line_what_to_place_by_hand(tmp_path, capsys):
    hub = FakeHub(tmp_path / "empty-hub")  # nothing there: the download fails like an offline machine
    assert not prepare("mig_bench", tmp_path / "data", download=hub.download)
    lines = capsys.readouterr().out.splitlines()
    fetch = [line for line in lines if "could not fetch" in line]
    assert len(fetch) == 1
    assert "Michael4933/MIG-Bench (OSError: Cannot reach the Hub" in fetch[0]
    assert f"place {tmp_path / 'data' / 'MIG-Bench' / 'MIG_data.json'}" in fetch[0]
    assert "https://huggingface.co/datasets/Michael4933/MIG-Bench" in fetch[0]


def test_archives_unpack_where_the_configs_look(tmp_path, capsys):
    repo = tmp_path / "hub" / "omlab" / "VLM-R1"
    repo.mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(tmp_path / "a.jpg")
    record = {"image": "a.jpg", "problem": "the cat", "solution": [10, 5, 60, 45], "width": 100, "height": 50}
    with zipfile.ZipFile(repo / "rec_jsons_processed.zip", "w") as z:
        z.writestr("rec_jsons_processed/refcoco_val.json", json.dumps([record, record]))
    with zipfile.ZipFile(repo / "train2014.zip", "w") as z:
        z.write(tmp_path / "a.jpg", "train2014/a.jpg")
    (repo / "unrelated.bin").write_text("not fetched")
    hub = FakeHub(tmp_path / "hub")
    data = tmp_path / "data"
    assert not prepare("refcoco", data, download=hub.download)  # 7 splits and the train file missing
    assert hub.calls[0]["allow_patterns"] == ["rec_jsons_processed.zip", "train2014.zip"]
    assert (data / "coco" / "train2014" / "a.jpg").is_file() and not (data / "unrelated.bin").exists()
    out = capsys.readouterr().out
    assert "refcoco_val.json: 2 records (expected 10,834) MISMATCH, 2 samples; images: 1 of 1 found" in out
    assert "rec_jsons_processed/refcocog_test.json: missing" in out


def test_list_prints_every_dataset_with_source_count_and_status(tmp_path, capsys):
    (tmp_path / "MIG-Bench").mkdir()
    (tmp_path / "MIG-Bench" / "MIG_data.json").write_text("[]")
    list_datasets(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(DATASETS) == 11
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {
        "univg_stage1",
        "univg_stage2",
        "mgrounding",
        "mig_bench",
        "mig_bench_revised",
        "refcoco",
        "lisa",
        "llmseg",
        "reasonvos",
        "revos",
    }
    assert "hf://datasets/Michael4933/MIG-Bench" in rows["mig_bench"] and "4,295" in rows["mig_bench"]
    assert "present" in rows["mig_bench"] and "missing" in rows["lisa"] and "by hand" in rows["lisa"]
    assert "hf://datasets/GD-ML/UniVG-R1-data" in rows["univg_stage1"]


def test_the_cli_runs_as_univg_data(tmp_path, capsys):
    from univg.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["data", "list", "--root", str(tmp_path)])
    assert done.value.code == 0 and "revos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["data", "prepare", "lisa", "--root", str(tmp_path), "--check-only"])
    assert done.value.code == 1 and "lisa: not in place; by hand:" in capsys.readouterr().out


def _config_paths() -> set[str]:
    """Every data/*.json path named in configs/*.yaml and configs/eval/*.yaml."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value.startswith("data/") and value.endswith(".json"):
            found.add(value)

    for config in sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs/eval").glob("*.yaml")):
        walk(yaml.safe_load(config.read_text()))
    return found


def test_every_data_file_a_config_reads_has_a_dataset_entry():
    known = {f"data/{f.path}" for e in DATASETS.values() for f in e.files}
    paths = _config_paths()
    # the stage configs read the release's two files whole; the eval configs one file each
    assert {"data/UniVG-R1-data/stage1_cotsft.json", "data/UniVG-R1-data/stage2_rl.json"} <= paths
    assert len(paths) >= 9
    assert paths <= known, sorted(paths - known)
    # and each eval config's image root is where its entry puts the images
    for name in ("mig_bench", "lisa", "llmseg", "reasonvos", "revos", "refcoco"):
        paths = config_data_paths(ROOT / "configs/eval" / f"{name}.yaml")
        entry = next(
            e for e in DATASETS.values() if any(f"data/{f.path}" == paths["test_file"] for f in e.files)
        )
        assert paths["image_root"] == str(Path("data") / entry.image_root), name
