"""The l2-regularised two-layer linear autoencoder: closed-form theory (``theory``), data
(``data``), plain and Lightning trainers (``train``), the checks of claims A and B (``checks``)
and the command ``python -m repro.autoencoder``. Importing the package loads no data."""
