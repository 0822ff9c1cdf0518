"""On-disk formats: control activation stores (and, later, runs and the concept cache)."""
