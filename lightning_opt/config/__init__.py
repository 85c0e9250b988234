"""From argv and config files to settings: the parsers every command shares (``parsing``) and
what determines a run's numbers (``fingerprints``)."""
