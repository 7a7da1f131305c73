"""The linear probe: standardised features into logistic regression (classes) or ridge
regression (numbers), the regularisation chosen by cross-validation on the training rows
only, then scored on the held-out rows.

Logistic regression tries ``CS`` by 3-fold cross-validation along one warm-started path;
ridge tries ``ALPHAS`` by efficient leave-one-out (one decomposition for the whole grid).
Both take well under a second at 750 training rows x 1,280 dims; beyond ``MAX_TRAIN_ROWS``
training rows a seeded random subset is fitted (the k-NN probe still uses every row)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # installed with scikit-learn

__all__ = ["ALPHAS", "CS", "MAX_TRAIN_ROWS", "linear_predict", "training_subsample"]

#: inverse strengths tried for logistic regression (on standardised features)
CS = (0.01, 0.1, 1.0, 10.0)
#: ridge strengths tried (on standardised features, so comparable across backbones)
ALPHAS = tuple(np.logspace(-1, 5, 7))
#: the linear probe fits on at most this many training rows (a seeded subset beyond)
MAX_TRAIN_ROWS = 5_000


def training_subsample(n_train: int, seed: int) -> np.ndarray:
    """Positions of the training rows the linear probe fits on: all, or a seeded random
    ``MAX_TRAIN_ROWS`` of them."""
    if n_train <= MAX_TRAIN_ROWS:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(seed).choice(n_train, MAX_TRAIN_ROWS, replace=False))


def linear_predict(
    train: np.ndarray, train_values: np.ndarray, test: np.ndarray, categorical: bool
) -> np.ndarray:
    """Predictions for ``test`` of a standardised linear model fitted on ``train``."""
    if categorical:
        model = LogisticRegressionCV(Cs=list(CS), cv=3, scoring="accuracy", max_iter=1000)
    else:
        model = RidgeCV(alphas=ALPHAS)
    pipeline = make_pipeline(StandardScaler(), model)
    # one BLAS thread: these fits are small, and threads waiting on each other made them
    # up to 9x slower on 2 busy cores (1,280 dims: 2 s -> 0.2 s)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # scikit-learn >= 1.8 announces new defaults for options this probe does not use
        warnings.simplefilter("ignore", FutureWarning)
        pipeline.fit(train.astype(np.float64), train_values)
    return pipeline.predict(test.astype(np.float64))
