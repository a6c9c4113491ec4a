"""What the nodes send to the browser is bounded in size.

Attribution and mask files travel between users, and their metadata comes back in the nodes' summaries: a
50 MB string in one field would otherwise be echoed into every /history entry and to every browser that opens
the queue. Every string in a node's UI payload is cut to FIELD_LIMIT characters, with an ellipsis that says how
long it was. The files themselves are not changed.
"""
FIELD_LIMIT = 4096


def bounded(value, limit: int = FIELD_LIMIT):
    """`value` (nested dicts, lists, tuples, strings, numbers) with every string at most about `limit` characters."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value):,} characters, cut)"
    if isinstance(value, dict):
        return {bounded(k, limit): bounded(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(bounded(v, limit) for v in value)
    return value
