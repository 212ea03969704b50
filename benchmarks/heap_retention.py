"""Host memory that freed tensors leave resident: no-gradient passes of the 2B vision tower (CPU).

    python benchmarks/heap_retention.py                                  # glibc's default malloc
    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/heap_retention.py   # what the FSDP path sets

Builds the Qwen2-VL-2B vision tower with ``--depth`` of its 32 blocks (random init), runs three
no-gradient passes over two 448 x 448 images (2 x 1,024 patches) and prints the resident set after
each, against before the passes. Nothing is kept between passes, so what stays is the C heap:
with glibc's default the mmap threshold rises to 32 MB after the first large free and the
blocks' 5-21 MB tensors then come from the heap and stay resident; a fixed 1 MiB threshold
(``univg.distributed.sharded_build.return_freed_memory_to_os``) returns them. GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import resource

import torch


def resident_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=4, help="vision blocks to build (the 2B tower has 32)")
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from univg.model.backbone import BackboneSpec

    torch.set_num_threads(1)
    cfg = BackboneSpec(preset="qwen2-vl-2b").config().vision_config
    cfg.depth = args.depth
    tower = Qwen2VisionTransformerPretrainedModel._from_config(cfg, dtype=torch.float32).eval()
    grid = torch.tensor([[1, 32, 32], [1, 32, 32]])
    patches = torch.randn(int(grid.prod(1).sum()), 3 * 2 * 14 * 14)
    before = resident_gb()
    with torch.no_grad():
        for i in range(args.passes):
            tower(patches, grid_thw=grid)
            now = resident_gb()
            print(f"pass {i}: resident {now:.3f} GB, +{now - before:.3f} GB over before the passes")


if __name__ == "__main__":
    main()
