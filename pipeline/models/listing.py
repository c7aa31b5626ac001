"""What `pipeline models list` and `pipeline models history` print, pure: rows from the versions on
disk, Triton's index and the routing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.models.routing import Change, Routing
from pipeline.models.versions import Version

# The figures of a version's metrics.json worth a column, in this order (each model has some of them).
FIGURES = ("holdout_auc", "precision_at_threshold", "recall_at_threshold", "precision", "recall", "f1")


def role(routing: Routing, version: str) -> str:
    """A version's part in its model's routing."""
    if version == routing.stable:
        return "stable"
    if version == routing.candidate:
        parts = [f"canary {routing.canary_share:.1%}" if routing.canary_share else "", ""]
        parts[1] = f"shadow {routing.shadow_share:.1%}" if routing.shadow_share else ""
        shares = ", ".join(p for p in parts if p)
        return f"candidate ({shares or 'no events yet'})"
    if version in routing.earlier:
        return "earlier stable"
    return "-"


def version_rows(
    model: str, on_disk: Sequence[Version], states: Mapping[str, str], routing: Routing
) -> list[dict[str, str]]:
    """One row per version on disk: its number, Triton's state of it, its role, when it was trained and
    its figures."""
    rows = []
    for version in on_disk:
        number = str(version.number)
        figures = ", ".join(f"{name} {version.metrics[name]:.3f}" for name in FIGURES if name in version.metrics)
        rows.append(
            {
                "model": model,
                "version": number,
                "triton": states.get(number, "not loaded"),
                "role": role(routing, number),
                "trained_at": version.trained_at or "-",
                "metrics": figures or "-",
            }
        )
    return rows


def table(rows: Sequence[Mapping[str, str]]) -> str:
    """Rows as aligned text columns under a header (the keys of the first row)."""
    if not rows:
        return ""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return "\n".join(lines)


def describe(change: Change) -> str:
    """What a change did, in a few words."""
    if change.action in ("init", "publish"):
        return f"{change.action} version {change.version}"
    if change.action == "share":
        parts = []
        if change.canary_share is not None:
            parts.append(f"canary {change.canary_share:.1%}")
        if change.shadow_share is not None:
            parts.append(f"shadow {change.shadow_share:.1%}")
        return "share " + ", ".join(parts)
    return change.action


def history_rows(changes: Sequence[Change], skipped: Sequence[tuple[Change, str]]) -> list[dict[str, str]]:
    refused = {id(change): why for change, why in skipped}
    return [
        {
            "at": change.at,
            "by": change.by,
            "change": describe(change) + (f" (not applied: {refused[id(change)]})" if id(change) in refused else ""),
            "why": change.why or "-",
        }
        for change in changes
    ]
