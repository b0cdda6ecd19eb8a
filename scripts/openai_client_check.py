#!/usr/bin/env python3
"""Drives a fleetmesh node's OpenAI-compatible chat API with the official `openai` client (from
scripts/client-venv.sh): one plain and one streamed completion of the same message, printed as one JSON
line {"plain": ..., "stream": ..., "stream_pieces": ..., "finish_reason": ..., "fleetmesh": ...}. Used by node/tests/openai_client.rs.

    .venv-clients/bin/python scripts/openai_client_check.py --api 127.0.0.1:7700 --token "$(cat ~/.fleetmesh/api.token)" \\
        --message "What is the capital of France?" --max-tokens 12
"""
import argparse
import json

from openai import OpenAI


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--message", required=True)
    p.add_argument("--max-tokens", type=int, default=32)
    a = p.parse_args()
    client = OpenAI(base_url=f"http://{a.api}/v1", api_key=a.token, timeout=300, max_retries=0)
    messages = [{"role": "user", "content": a.message}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=a.max_tokens)
    streamed = []
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, max_tokens=a.max_tokens,
                                                stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed.append(chunk.choices[0].delta.content)
    extra = plain.model_extra or {}
    print(json.dumps({
        "plain": plain.choices[0].message.content,
        "stream": "".join(streamed),
        "stream_pieces": len(streamed),
        "finish_reason": plain.choices[0].finish_reason,
        "usage": plain.usage.model_dump() if plain.usage else None,
        "fleetmesh": extra.get("fleetmesh"),
    }))


if __name__ == "__main__":
    main()
