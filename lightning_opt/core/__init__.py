"""The bottom of the package: what every layer may import and that imports no other part of
lightning_opt. Classes by import path (``reflection``), files written whole (``atomic``), names
that become folders (``names``), signals as Ctrl-C (``signals``), the protocols a population
declares (``protocols``), norms with a member dimension (``norms``) and search spaces as data
(``search_space``)."""
