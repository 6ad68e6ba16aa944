"""``python -m tutorial_lib.course``: the instructor commands (student copies, HTML pages, cache warm-up)."""
from .commands import main

raise SystemExit(main())
