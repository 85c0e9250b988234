"""What every benchmark script records: the machine it ran on, and the JSON file it writes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info(**extra: Any) -> dict[str, Any]:
    """Python, torch, platform, cores and load: numbers mean nothing without them."""
    return {
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "platform": platform.platform(),
        "os_cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
        **extra,
    }


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")
