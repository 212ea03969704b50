"""``python -m univg.rehearsal``."""

from univg.rehearsal.run import main

raise SystemExit(main())
