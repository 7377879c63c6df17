"""The last step of every `sgvla gen` run (fresh or resumed): statistics, then the card.

The order matters: the card quotes the merged counts of meta/stats.json.
"""

from __future__ import annotations

from pathlib import Path

from sgvla.dataset.card import write_card
from sgvla.dataset.stats import merge_stats


def finalize_dataset(root: Path, command_line: str, sources: list[str]) -> None:
    """Merge the shards' partial statistics into meta/stats.json and (re)write README.md."""
    merge_stats(root)
    write_card(root, command_line, sources)
