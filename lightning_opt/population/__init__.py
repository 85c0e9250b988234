"""K independent copies of any network trained at once, each exactly its own run
(``module.PopulationClassifier``; its jobs: ``optimizers``, ``selection``, ``checkpoints``,
``member_logging``; stacking the nets: ``lightning_opt.population.stacking``)."""

from lightning_opt.population.module import PopulationClassifier

__all__ = ["PopulationClassifier"]
