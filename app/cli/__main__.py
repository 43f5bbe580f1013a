"""`python -m app.cli`: the same entry point as the `pe-search` script."""

from app.cli import main

raise SystemExit(main())
