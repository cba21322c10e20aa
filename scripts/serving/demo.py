"""`make demo`: serve tiny-dev, ask it one question with the official openai client, stop.

The tiny model is random, so the reply is gibberish; what the demo shows is the whole
path working offline: BentoML serving vLLM's OpenAI API with the real engine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from openai import OpenAI

from scripts.tiny.store import import_tiny_model
from scripts.serving.process import bento_server

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()

    print(f"1/3 tiny model: {import_tiny_model()}")
    print(f"2/3 bentoml serve models/tiny-dev on port {args.port} (the first start takes about a minute)")
    with bento_server(ROOT / "models" / "tiny-dev", args.port) as server:
        ready_after = server.wait_ready(progress=True)
        print(f"    ready after {ready_after:.0f}s; server log: {server.log_path}")
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        question = "What is BentoML?"
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model="tiny-dev", messages=[{"role": "user", "content": question}], max_tokens=64, extra_body={"ignore_eos": True}
        )
        elapsed = time.perf_counter() - started
        tokens = reply.usage.completion_tokens
        print(f"3/3 asked {question!r} with the openai client; the random tiny model answered:")
        print(f"    {reply.choices[0].message.content!r}")
        print(f"    {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.0f} tokens/s")
    print("server stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
