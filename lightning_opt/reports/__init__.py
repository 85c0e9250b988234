"""An experiment's numbers and pages: statistics (``stats``), every number and sentence of the
report computed once (``summary``), and its writers (``text`` for results.md, ``page`` for
comparison.html and comparison.png)."""
