"""Where a data set lives: a folder the user names, or the generated demo copy under data/demo/."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO_ROOT / "data" / "demo"


def resolve_data_root(dataset: str, data_root: str | os.PathLike | None) -> Path:
    """The folder of `dataset` in its official layout; None means the demo copy, generated on first use."""
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {root}: no such directory (expected the {dataset} data set "
                                    f"in its official layout, see docs/DATA.md)")
        return root
    from cgns.synthetic import ensure_demo

    return Path(ensure_demo(dataset, root=DEMO_ROOT))
