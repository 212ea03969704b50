"""Fetch, lay out and check every dataset of the paper (``python -m univg.data list|prepare``).

One :class:`DatasetEntry` per dataset says where it comes from (a Hugging Face Hub repository, or
by hand), which annotation files the configs read (paths relative to the data root, ``data/`` in
every config), in which reader format, how many records each should hold, and where its images
live. ``prepare`` downloads what is on the Hub with ``huggingface_hub`` into the layout the
configs read by default, unpacks archives, then checks: each file reads with its reader, its record
count, and that every image a sample refers to exists (counted; the first missing ones named).
Where a download is impossible (offline, gated, not on the Hub) one line says what to place where.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from univg.core.errors import error_summary

#: How many missing images a report names (all are counted).
SHOW_MISSING = 5


@dataclass(frozen=True)
class DataFile:
    """One annotation file: its path under the data root, reader format, expected record count."""

    path: str
    format: str
    count: int | None = None  # None: no published count to check against


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    used_for: str
    files: tuple[DataFile, ...]
    image_root: str  # under the data root; the configs' image_root
    hub_repo: str | None = None  # a Hub dataset repository, None when it must be placed by hand
    hub_patterns: tuple[str, ...] = ()  # allow_patterns of the download (empty: the whole repository)
    hub_dir: str = ""  # where the repository's files land, under the data root
    by_hand: str = ""  # what to download and place where when the Hub cannot serve it
    images_note: str = ""  # where the images come from, when not from the same repository
    moves: tuple[tuple[str, str], ...] = ()  # (from, to) under the data root after unpacking

    @property
    def source(self) -> str:
        return f"hf://datasets/{self.hub_repo}" if self.hub_repo else "by hand"

    @property
    def expected(self) -> int | None:
        counts = [f.count for f in self.files]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


_REFCOCO_SPLITS = {  # the standard REC split sizes (referring expressions per split)
    "refcoco_val": 10834,
    "refcoco_testA": 5657,
    "refcoco_testB": 5095,
    "refcocop_val": 10758,
    "refcocop_testA": 5726,
    "refcocop_testB": 4889,
    "refcocog_val": 4896,
    "refcocog_test": 9602,
}
_VLM_R1 = "omlab/VLM-R1"
_RELEASE_CODE = "https://github.com/AMAP-ML/UniVG-R1"

DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            name="univg_stage1",
            title="UniVG-R1 stage-1 CoT data",
            used_for="CoT-SFT (configs/cot_sft.yaml)",
            files=(DataFile("UniVG-R1-data/stage1_cotsft.json", "cot_sft"),),
            image_root="images",
            hub_repo="GD-ML/UniVG-R1-data",
            hub_patterns=("stage1_cotsft.json",),
            hub_dir="UniVG-R1-data",
            images_note="the MGrounding-630k images (`prepare mgrounding`), unpacked under data/images",
        ),
        DatasetEntry(
            name="univg_stage2",
            title="UniVG-R1 stage-2 RL prompts",
            used_for="GRPO / GRPO-Difficulty / RL (configs/grpo*.yaml, configs/rl.yaml)",
            files=(DataFile("UniVG-R1-data/stage2_rl.json", "stage2_rl"),),
            image_root="images",
            hub_repo="GD-ML/UniVG-R1-data",
            hub_patterns=("stage2_rl.json",),
            hub_dir="UniVG-R1-data",
            images_note="the MGrounding-630k images (`prepare mgrounding`), unpacked under data/images",
        ),
        DatasetEntry(
            name="mgrounding",
            title="MGrounding-630k (Migician)",
            used_for="plain SFT (configs/sft.yaml)",
            files=(DataFile("MGrounding-630k/mgrounding.json", "mgrounding"),),
            image_root="images",
            hub_repo="Michael4933/MGrounding-630k",
            hub_dir="MGrounding-630k",
            by_hand="configs/sft.yaml reads one conversation file: concatenate the release's task files "
            "into data/MGrounding-630k/mgrounding.json and unpack its images under data/images",
        ),
        DatasetEntry(
            name="mig_bench",
            title="MIG-Bench (Migician)",
            used_for="Table 1 (configs/eval/mig_bench.yaml), validation of every training stage",
            files=(DataFile("MIG-Bench/MIG_data.json", "mig_bench", 4295),),
            image_root=".",  # the file's image paths start with ./MIG-Bench/images/
            hub_repo="Michael4933/MIG-Bench",
            hub_dir="MIG-Bench",
        ),
        DatasetEntry(
            name="mig_bench_revised",
            title="MIG-Bench, revised annotations (UniVG-R1 release)",
            used_for="Table 1 (configs/eval/mig_bench_revised.yaml)",
            files=(DataFile("MIG-Bench/revised_MIG_bench.json", "mig_bench"),),
            image_root=".",
            by_hand=f"take revised_MIG_bench.json from the UniVG-R1 code release ({_RELEASE_CODE}) and put it "
            "in data/MIG-Bench/ (images: `prepare mig_bench`)",
        ),
        DatasetEntry(
            name="refcoco",
            title="RefCOCO / RefCOCO+ / RefCOCOg (VLM-R1's REC files)",
            used_for="Table 3 (configs/eval/refcoco.yaml); the RefCOCO share of stage 1 and 2",
            files=(
                *(
                    DataFile(f"rec_jsons_processed/{s}.json", "refcoco", n)
                    for s, n in _REFCOCO_SPLITS.items()
                ),
                DataFile("refcoco/refcoco_train.json", "refcoco"),  # what the training mixtures read
            ),
            image_root="coco/train2014",
            hub_repo=_VLM_R1,
            hub_patterns=("rec_jsons_processed.zip", "train2014.zip"),
            hub_dir=".",
            by_hand="the training mixtures read data/refcoco/refcoco_train.json: put the REC training file "
            "(refcoco_train.json of the same release) there",
            images_note="COCO train2014 (train2014.zip of the same repository), unpacked to data/coco/train2014",
            moves=(("train2014", "coco/train2014"),),
        ),
        DatasetEntry(
            name="lisa",
            title="LISA-Grounding (boxes from ReasonSeg)",
            used_for="Table 2 (configs/eval/lisa.yaml)",
            files=(
                DataFile("lisa_grounding/lisa_val.json", "lisa"),
                DataFile("lisa_grounding/lisa_test.json", "lisa"),
            ),
            image_root="lisa_grounding/images",
            by_hand="put the grounding files of the UniVG-R1 evaluation data in data/lisa_grounding/ "
            "(lisa_val.json, lisa_test.json) and their images in data/lisa_grounding/images/",
        ),
        DatasetEntry(
            name="llmseg",
            title="LLMSeg-Grounding",
            used_for="Table 2 (configs/eval/llmseg.yaml)",
            files=(DataFile("llmseg_grounding/llmseg_test.json", "llmseg"),),
            image_root="llmseg_grounding/images",
            by_hand="put llmseg_test.json of the UniVG-R1 evaluation data in data/llmseg_grounding/ and its "
            "images in data/llmseg_grounding/images/",
        ),
        DatasetEntry(
            name="reasonvos",
            title="ReasonVOS-Grounding",
            used_for="Table 2 (configs/eval/reasonvos.yaml)",
            files=(DataFile("reasonvos/reasonvos_grounding.json", "vos"),),
            image_root="reasonvos/JPEGImages",
            by_hand="put reasonvos_grounding.json of the UniVG-R1 evaluation data in data/reasonvos/ and the "
            "ReasonVOS frames in data/reasonvos/JPEGImages/",
        ),
        DatasetEntry(
            name="revos",
            title="ReVOS-Grounding",
            used_for="Table 2 (configs/eval/revos.yaml)",
            files=(DataFile("revos/revos_grounding.json", "vos"),),
            image_root="revos/JPEGImages",
            by_hand="put revos_grounding.json of the UniVG-R1 evaluation data in data/revos/ and the ReVOS "
            "frames in data/revos/JPEGImages/",
        ),
    )
}


def dataset_of(path: str | os.PathLike) -> DatasetEntry | None:
    """The dataset whose annotation file ``path`` is (matched on the path under the data root, e.g.
    ``UniVG-R1-data/stage2_rl.json``), for telling a user what to prepare; None when unknown.

    >>> dataset_of("data/UniVG-R1-data/stage2_rl.json").name, dataset_of("elsewhere/x.json")
    ('univg_stage2', None)
    """
    text = Path(path).as_posix()
    for entry in DATASETS.values():
        if any(text == f.path or text.endswith("/" + f.path) for f in entry.files):
            return entry
    return None


def get_entry(name: str) -> DatasetEntry:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


# ----------------------------------------------------------------------------- checking
@dataclass
class FileCheck:
    """What :func:`check_file` found for one annotation file."""

    path: Path
    expected: int | None
    exists: bool = False
    records: int = 0
    samples: int = 0
    skipped: int = 0
    images: int = 0
    missing_images: list[str] = field(default_factory=list)
    n_missing_images: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        count_ok = self.expected is None or self.records == self.expected
        return self.exists and self.error is None and count_ok and self.n_missing_images == 0

    def line(self) -> str:
        if not self.exists:
            return f"{self.path}: missing"
        if self.error is not None:
            return f"{self.path}: cannot be read: {self.error}"
        want = "" if self.expected is None else f" (expected {self.expected:,})"
        mark = "" if self.expected is None or self.records == self.expected else " MISMATCH"
        text = f"{self.path}: {self.records:,} records{want}{mark}, {self.samples:,} samples"
        if self.skipped:
            text += f", {self.skipped:,} records skipped by the reader"
        text += f"; images: {self.images - self.n_missing_images:,} of {self.images:,} found"
        if self.n_missing_images:
            text += f", {self.n_missing_images:,} missing (first: {', '.join(self.missing_images)})"
        return text


def check_file(data_file: DataFile, root: Path, image_root: Path) -> FileCheck:
    """Read one annotation file with its reader; count records, samples and images that exist."""
    from univg.data.readers import read_samples

    path = root / data_file.path
    check = FileCheck(path=path, expected=data_file.count, exists=path.is_file())
    if not check.exists:
        return check
    try:
        samples = read_samples(path, data_file.format, image_root=image_root, skip_invalid=True)
    except (ValueError, OSError) as err:  # not JSON, not a list, wrong format: name it, do not crash
        check.error = str(err)
        return check
    report = samples.report
    check.records, check.samples, check.skipped = report.records, report.samples, len(report.skipped)
    seen: set[str] = set()
    for sample in samples:
        for image in sample.images:
            ref = str(image)
            if ref in seen:
                continue
            seen.add(ref)
            if not os.path.isfile(ref):
                check.n_missing_images += 1
                if len(check.missing_images) < SHOW_MISSING:
                    check.missing_images.append(ref)
    check.images = len(seen)
    return check


def check_entry(entry: DatasetEntry, root: str | os.PathLike) -> list[FileCheck]:
    root = Path(root)
    return [check_file(f, root, root / entry.image_root) for f in entry.files]


def status(entry: DatasetEntry, root: str | os.PathLike) -> str:
    """Cheap status for ``list``: which annotation files are in place (images are checked by ``prepare``)."""
    present = sum((Path(root) / f.path).is_file() for f in entry.files)
    if present == 0:
        return "missing"
    return "present" if present == len(entry.files) else f"partial ({present} of {len(entry.files)} files)"


# ----------------------------------------------------------------------------- fetching
Downloader = Callable[..., Any]


def _snapshot_download(**kwargs: Any) -> Any:
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)


def unpack_archives(folder: Path) -> list[Path]:
    """Unpack each ``.zip`` / ``.tar(.gz)`` directly in ``folder`` once (a ``.unpacked`` marker)."""
    done = []
    for archive in sorted(folder.iterdir()) if folder.is_dir() else []:
        marker = archive.with_name(archive.name + ".unpacked")
        if marker.exists() or not archive.is_file():
            continue
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(folder)
        elif archive.name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as t:
                # the "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                t.extractall(folder, **kwargs)
        else:
            continue
        marker.touch()
        done.append(archive)
    return done


def fetch(entry: DatasetEntry, root: Path, download: Downloader = _snapshot_download) -> str | None:
    """Download ``entry`` from the Hub into its place under ``root``; None, or why it could not."""
    if entry.hub_repo is None:
        return "not on the Hugging Face Hub"
    target = root / entry.hub_dir
    target.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"repo_id": entry.hub_repo, "repo_type": "dataset", "local_dir": str(target)}
    if entry.hub_patterns:
        kwargs["allow_patterns"] = list(entry.hub_patterns)
    try:
        download(**kwargs)
    except Exception as err:  # offline, gated, renamed: one line, the user places it by hand
        return error_summary(err)
    unpack_archives(target)
    for src, dst in entry.moves:  # where an archive unpacks is not where the configs look
        if (root / src).exists() and not (root / dst).exists():
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / src, root / dst)
    return None


def how_by_hand(entry: DatasetEntry, root: Path) -> str:
    files = ", ".join(str(root / f.path) for f in entry.files)
    where = f"download https://huggingface.co/datasets/{entry.hub_repo} and " if entry.hub_repo else ""
    text = f"{where}place {files} (images under {root / entry.image_root})"
    return text + (f"; {entry.by_hand}" if entry.by_hand else "")


def prepare(
    name: str,
    root: str | os.PathLike = "data",
    download: Downloader = _snapshot_download,
    fetch_files: bool = True,
    echo: Callable[[str], None] = print,
) -> bool:
    """Fetch (where possible) and check one dataset; prints what it did. True when all is in place."""
    entry = get_entry(name)
    root = Path(root)
    echo(f"{entry.name}: {entry.title} -> {root}/ ({entry.used_for})")
    if fetch_files and entry.hub_repo is not None:
        problem = fetch(entry, root, download)
        if problem is not None:
            echo(
                f"{entry.name}: could not fetch {entry.hub_repo} ({problem}); by hand: {how_by_hand(entry, root)}"
            )
    checks = check_entry(entry, root)
    for check in checks:
        echo(f"  {check.line()}")
    if not all(c.exists for c in checks):
        echo(f"{entry.name}: not in place; by hand: {how_by_hand(entry, root)}")
    elif any(c.n_missing_images for c in checks) and entry.images_note:
        echo(f"{entry.name}: images come from {entry.images_note}")
    ok = all(c.ok for c in checks)
    echo(f"{entry.name}: {'ready' if ok else 'NOT ready'}")
    return ok


def list_datasets(root: str | os.PathLike = "data", echo: Callable[[str], None] = print) -> None:
    """One line per dataset: name, source, expected records, status under ``root``."""
    rows = [("dataset", "source", "expected records", f"status under {root}/", "used for")]
    for e in DATASETS.values():
        expected = "–" if e.expected is None else f"{e.expected:,}"
        rows.append((e.name, e.source, expected, status(e, root), e.used_for))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])


__all__ = [
    "DATASETS",
    "DataFile",
    "DatasetEntry",
    "FileCheck",
    "check_entry",
    "check_file",
    "fetch",
    "get_entry",
    "list_datasets",
    "prepare",
    "status",
    "unpack_archives",
]
