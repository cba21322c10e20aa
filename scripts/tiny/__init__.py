"""The tiny offline test models (llama.py, vl.py, rerank.py on common.py) and a local Hugging Face Hub (hub.py)."""
