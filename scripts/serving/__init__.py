"""Serving a model folder: server processes (process.py), build/containerize/deploy (bento.py), the demo."""
