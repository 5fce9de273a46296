"""Hyperparameter search with Optuna over params.yaml's tune.space, reusing the training code: every trial
is one fit(). space: the search-space format; study: storage, sampler, pruner and the study's name;
worker: the trials and the budget shared by many workers; results: tune.out, MLflow summary, best trials."""
