"""Layer 6, ``course``: presentation and commands. The notebooks' setup cell, the reproduction
(``python -m tutorial_lib.course.reproduce``), cache warming (``python -m tutorial_lib.course.warm_cache``),
and the instructor's commands (``python -m tutorial_lib.course``: a student copy, static HTML pages,
a warm cache).

May import from every other layer. Apart from the setup cell, nothing here is re-exported by
``tutorial_lib``; the commands are run, not imported.
"""
