"""One run's objects (model, population, data, trainer, callbacks) built from parsed settings:
the one place where fit, tune, compare and benchmark turn a config into something that trains
(``build``)."""
