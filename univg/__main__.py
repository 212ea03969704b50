"""``python -m univg fit --config configs/grpo_diff.yaml``."""

from univg.cli import main

if __name__ == "__main__":
    main()
