"""Tuning: the ``tune`` command (``tune``), its trials single and as populations (``trials``),
worker processes (``workers``), the claim-and-heartbeat queue over a study (``claims``), study
storages (``storage``) and a study's output files (``outputs``)."""
