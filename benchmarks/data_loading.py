"""Time reading the full MIG-Bench file and building its first collated batch.

The real images are not shipped, so blank 640 x 480 JPEGs are written under a temporary image root
with the file names the first batch needs. Prints: read time (4,295 records), processor load time,
collate time of the first batch (train and generate mode; first call and again), and the shapes.
Target: read + first batch under 2 s (processor loading, a one-off per process, reported apart).

    python benchmarks/data_loading.py [--mig PATH] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from univg.data import GroundingCollator, read_mig_bench, resolve_image_path
from univg.model.tokenizer import load_processor

DEFAULT_MIG = Path(__file__).resolve().parents[2] / "shared" / "data" / "mig_bench" / "MIG_data.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mig",
        default=str(DEFAULT_MIG if DEFAULT_MIG.is_file() else "/work/shared/data/mig_bench/MIG_data.json"),
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    samples = read_mig_bench(args.mig)
    t_read = time.perf_counter() - t0
    print(f"read {len(samples)} samples in {t_read:.3f} s  ({samples.report.summary()})")

    t0 = time.perf_counter()
    processor = load_processor()
    t_proc = time.perf_counter() - t0
    print(f"processor load (once per process): {t_proc:.3f} s")

    with tempfile.TemporaryDirectory() as root:
        first = samples[: args.batch_size]
        for s in first:
            for ref in s.images:
                path = Path(resolve_image_path(ref, root))
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", tuple(args.size), (127, 127, 127)).save(path, quality=90)
        timings = {}
        for mode in ("generate", "train"):
            collate = GroundingCollator(processor, mode=mode, target_format="answer", image_root=root)
            t0 = time.perf_counter()
            batch = collate(first)
            timings[mode] = time.perf_counter() - t0
            t0 = time.perf_counter()
            collate(first)
            warm = time.perf_counter() - t0  # the image processor dominates (~90%) once warm
            print(
                f"{mode:>8} batch of {len(first)} ({sum(len(s.images) for s in first)} images of {args.size[0]}x{args.size[1]}):"
                f" {timings[mode]:.3f} s first, {warm:.3f} s again; input_ids {tuple(batch['input_ids'].shape)},"
                f" pixel_values {tuple(batch['pixel_values'].shape)}"
            )
    total = t_read + timings["generate"]
    verdict = "OK" if total < 2.0 else "SLOW"
    print(f"read + first batch: {total:.3f} s (target < 2 s: {verdict})")


if __name__ == "__main__":
    main()
