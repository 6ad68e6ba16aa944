"""``python -m tutorial_lib``: list the course's commands, one line each; ``python -m tutorial_lib COMMAND [ARGS]``
runs one (:func:`tutorial_lib.course.commands.dispatch`)."""
from .course.commands import dispatch

raise SystemExit(dispatch())
