"""The repository's tools, run from its root as `python -m scripts.<module>` (the Makefile does).

- catalog.py, generate.py, new_model.py, ...: the catalog, its checks, and the generator of models/
- serving/: starting servers (process.py), building, containerizing and deploying a folder (bento.py), the demo
- bench/: `make bench`, the benchmark against plain vLLM, and its cost probes
- tiny/: the tiny offline test models and the local Hugging Face Hub the tests download from
"""
