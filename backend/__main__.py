"""``python -m backend serve ...`` — same as ``rsfm-backend``."""

from backend.cli import main

raise SystemExit(main())
