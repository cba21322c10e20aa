"""`make bench` and its probes: the generated services against plain vLLM (cli.py), run one server at a time."""
