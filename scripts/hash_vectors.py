#!/usr/bin/env python3
"""Independent reference for docs/hashing.md: recomputes the published test vectors with
the Python `blake3` package (pip install blake3), from the specification alone."""
import struct
from blake3 import blake3

ENTRY = "etc-shadow 2026-11 entry v1"
NODE = "etc-shadow 2026-11 merkle node v1"
ROOT = "etc-shadow 2026-11 merkle root v1"


def field(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def derive(context: str, material: bytes) -> bytes:
    return blake3(material, derive_key_context=context).digest()


def entry(path: str, mode: int, owner: str, group: str, secret: bool, content: bytes) -> bytes:
    material = (field(path.encode()) + struct.pack("<I", mode) + field(owner.encode())
                + field(group.encode()) + bytes([1 if secret else 0]) + field(content))
    return derive(ENTRY, material)


def root(entries: dict) -> bytes:
    level = [entries[p] for p in sorted(entries, key=lambda p: p.encode())]
    count = len(level)
    while len(level) > 1:
        level = [derive(NODE, level[i] + level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    top = level[0] if level else bytes(32)
    return derive(ROOT, struct.pack("<Q", count) + top)


features = entry("features.json", 0o644, "", "", False, b'{"beta": true}\n')
secret = entry("secrets/db.env", 0o600, "app", "app", True, b"DB_PASSWORD=hunter2\n")
site = entry("nginx/site.conf", 0o644, "", "", False, b"server { listen 80; }\n")
app = entry("app.toml", 0o644, "", "", False, b"[server]\nport = 8080\n")
print("entry features.json  ", features.hex())
print("entry secrets/db.env ", secret.hex())
print("root of no entries   ", root({}).hex())
print("root of three entries", root({"nginx/site.conf": site, "app.toml": app, "features.json": features}).hex())
