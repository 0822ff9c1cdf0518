"""Explain on a Ray cluster: worker actors own the models (one ModelCache each), the driver owns
the search. Ray is an optional extra, imported only by `--ray` and `nacosae serve`."""
