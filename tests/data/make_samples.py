"""Writes the small trace samples beside it, from the formats' published descriptions (no downloads).

- `aiperf_agentic.jsonl`: AIPerf's agentic `mooncake_trace` sessions in the delta layout, as `aiperf
  synthesize agentic-code` writes them: 20 sessions, 438 rows; a session's first row carries `timestamp`
  (ms), `group_id` and its whole prompt, whose hash ids start with a system prompt every session shares
  and a group prefix; later rows carry `delay` (ms after the previous round ends) and only the new input.
  Blocks of 512 tokens.
- `bailian.jsonl`: Alibaba Bailian usage-trace rows (chat_id, parent_chat_id -1 for a root, timestamp s,
  input_length, output_length, type, turn, hash_ids of 16-token blocks), small enough to check by hand
  (tests/test_trace_formats.py states the sessions and hit rates).
- `mooncake_sessions.jsonl`: Mooncake rows of whole prompts with our session_id, round and delay.

Run it again only to change a sample: `python tests/data/make_samples.py`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = 512


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


def aiperf_agentic(sessions: int = 20, rows: int = 438, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    turns = [1] * sessions
    for _ in range(rows - sessions):  # spread the later rows over the sessions, unevenly
        turns[min(int(rng.expovariate(1 / 6)), sessions - 1)] += 1
    system = list(range(12))  # 12 shared blocks: the system prompt and tools
    next_id = 1000
    out = []
    for s in range(sessions):
        group = s % 4
        group_ids = [100 + 10 * group + k for k in range(4)]
        first = (len(system) + len(group_ids)) * BLOCK + rng.randint(200, 3000)
        own = blocks(first) - len(system) - len(group_ids)
        ids = system + group_ids + list(range(next_id, next_id + own))
        next_id += own
        sid = f"sess-{s:04d}"
        out.append({"session_id": sid, "input_length": first, "output_length": rng.randint(40, 400),
                    "hash_ids": ids, "timestamp": float(1500 * s), "group_id": group})
        for _ in range(turns[s] - 1):
            new = rng.randint(30, 4000)
            ids = list(range(next_id, next_id + blocks(new)))
            next_id += len(ids)
            out.append({"session_id": sid, "input_length": new, "output_length": rng.randint(20, 600),
                        "hash_ids": ids, "delay": round(rng.uniform(50, 5000), 1)})
    return out


# chat_id, parent, timestamp s, input, output, type, hash ids (16-token blocks): see test_trace_formats.py
BAILIAN = [
    (101, -1, 0.0, 40, 10, "text", [1, 2, 3]),
    (201, -1, 1.0, 20, 4, "text", [20, 21]),
    (301, -1, 2.0, 48, 12, "search", [1, 2, 30]),          # shares the system prompt (blocks 1, 2) with 101
    (202, 201, 3.0, 20, 6, "text", [20, 22]),               # history trimmed (20 < 20 + 4): an agent of its own
    (203, 202, 4.0, 40, 7, "text", [20, 23, 24]),           # continues 202
    (102, 101, 5.0, 70, 20, "text", [1, 2, 4, 5, 6]),       # continues 101
    (401, 999, 6.0, 33, 3, "file", [40, 41, 42]),           # its parent is not in the file
    (103, 102, 9.0, 100, 5, "text", [1, 2, 4, 5, 7, 8, 9]),  # continues 102
    (104, 101, 12.0, 60, 8, "image", [1, 2, 10, 11]),       # a second child of 101: an agent of its own
]


def bailian() -> list[dict]:
    turn: dict[int, int] = {}
    out = []
    for chat, parent, ts, inp, outp, kind, ids in BAILIAN:
        turn[chat] = turn.get(parent, 0) + 1
        out.append({"chat_id": chat, "parent_chat_id": parent, "timestamp": ts, "input_length": inp,
                    "output_length": outp, "type": kind, "turn": turn[chat], "hash_ids": ids})
    return out


def mooncake_sessions() -> list[dict]:
    """Three sessions of whole prompts (blocks of 512: a full block keeps its id in later rounds)."""
    return [
        {"timestamp": 0, "input_length": 1200, "output_length": 100, "hash_ids": [0, 1, 2], "session_id": "s0", "round": 0},
        {"timestamp": 0, "input_length": 1500, "output_length": 50, "hash_ids": [0, 1, 3], "session_id": "s0", "round": 1, "delay": 1500},
        {"timestamp": 0, "input_length": 2100, "output_length": 80, "hash_ids": [0, 1, 4, 5, 6], "session_id": "s0", "round": 2, "delay": 250.5},
        {"timestamp": 0, "input_length": 600, "output_length": 30, "hash_ids": [0, 7], "session_id": "s1", "round": 0},
        {"timestamp": 0, "input_length": 700, "output_length": 30, "hash_ids": [0, 8], "session_id": "s1", "round": 1},
        {"timestamp": 0, "input_length": 5000, "output_length": 200, "hash_ids": list(range(9, 19)), "session_id": "s2", "round": 0},
    ]


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    write("aiperf_agentic.jsonl", aiperf_agentic())
    write("bailian.jsonl", bailian())
    write("mooncake_sessions.jsonl", mooncake_sessions())
