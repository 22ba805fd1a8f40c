"""Read an offline W&B run file (``run-<id>.wandb``) without a server: the records are W&B's
protobufs in LevelDB's log format (32 KiB blocks of CRC, length, type, payload after a 7-byte
header). wandb >= 0.20 has no public reader (``wandb sync`` uploads them)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk


def read_run(path: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(run id / name / group, history rows) of one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    run: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "run":
            run = {"id": record.run.run_id, "name": record.run.display_name, "group": record.run.run_group}
    return run, rows
