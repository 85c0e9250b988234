"""One model's training as a LightningModule: the classifier (``classifier``) around any net and
any optimizer, its minibatch loop (``loop``), the settings it logs as hyperparameters
(``hparams``) and ``predict``'s CSV writer (``predictions``). A population of K members
(``lightning_opt.population``) builds on the same loop."""
