"""Other spellings of config keys that users type, read as prime's own before validation.

The seed design's sample trainer config writes ``training.optimizer.type = "AdamW"`` and
``training.local_epochs``; prime's keys are ``training.optimizer.name`` (any case) and
``federated.local_epochs``. Each other spelling is read as prime's key; both given with
different values is an error that names both keys and the file and says what to write.
Keys whose meaning differs are not aliased: they are refused in ``config._MOVED``.
"""

from __future__ import annotations

from typing import Any

from prime.core.errors import ConfigError

#: Tables whose ``name`` is an enum matched without regard to case (``AdamW`` is ``adamw``).
_CASELESS_NAMES = (("training", "optimizer"), ("training", "scheduler"))


def _table(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _with(data: dict[str, Any], path: tuple[str, ...], table: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with the table at ``path`` replaced (the caller's dicts are never changed)."""
    if not path:
        return table
    inner = data.get(path[0]) if isinstance(data.get(path[0]), dict) else {}
    return {**data, path[0]: _with(inner, path[1:], table)}


def _same(a: Any, b: Any) -> bool:
    fold = lambda v: v.lower() if isinstance(v, str) else v  # noqa: E731
    return fold(a) == fold(b)


def _move(data: dict[str, Any], source: str, old: tuple[str, ...], new: tuple[str, ...]) -> dict[str, Any]:
    """Read ``old`` as ``new``: same value both places is fine, different values are an error."""
    table = _table(data, old[:-1])
    if table is None or old[-1] not in table:
        return data
    value = table[old[-1]]
    target = _table(data, new[:-1]) or {}
    if new[-1] in target and not _same(target[new[-1]], value):
        raise ConfigError(f"invalid config\n  {source}: keys '{'.'.join(old)}' = {value!r} and '{'.'.join(new)}' = "
                          f"{target[new[-1]]!r} disagree; write only {'.'.join(new)}")
    data = _with(data, old[:-1], {k: v for k, v in table.items() if k != old[-1]})
    target = _table(data, new[:-1]) or {}
    return _with(data, new[:-1], {**target, new[-1]: target.get(new[-1], value)})


def normalize(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with other spellings read as prime's keys (a new mapping; ``data`` is untouched)."""
    data = _move(data, source, ("training", "optimizer", "type"), ("training", "optimizer", "name"))
    data = _move(data, source, ("training", "local_epochs"), ("federated", "local_epochs"))
    for path in _CASELESS_NAMES:
        table = _table(data, path)
        if table is not None and isinstance(table.get("name"), str):
            data = _with(data, path, {**table, "name": table["name"].lower()})
    return data
