"""What commands print besides text: JSON on stdout."""

from __future__ import annotations

import json


def print_json(data) -> None:
    print(json.dumps(data, indent=2))
