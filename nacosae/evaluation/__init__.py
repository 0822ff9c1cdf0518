"""`nacosae evaluate`: held-out CoSy scoring, method comparison, novelty, top control images."""
