"""Models: the shared cache, explained vision models, and (later) generators and LLMs."""
