"""Ray: a generic executor for any command's job (models/sides.py) on worker actors, each with
its own ModelCache; the driver keeps the command's state. Ray is an optional extra, imported
only by `--ray` and `nacosae serve`; nothing here knows which command it runs."""
