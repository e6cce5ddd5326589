"""`python -m bot` is the same as the `paperbot` console script."""

from bot.cli import main

raise SystemExit(main())
