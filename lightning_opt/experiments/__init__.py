"""Experiments: ``compare`` (``compare``), its plan checked before the first trial (``plans``),
final runs over seeds (``finals``) and their units on the study storage (``final_units``)."""
