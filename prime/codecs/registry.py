"""Codecs by name: what ``[compression]`` and a blob's header name."""

from __future__ import annotations

from typing import Any

from prime.codecs.base import Codec
from prime.codecs.fp32 import FP32
from prime.codecs.half import BF16, FP16
from prime.codecs.int8 import Int8
from prime.codecs.topk import TopK
from prime.codecs.uint8 import UInt8

CODECS: dict[str, type[Codec]] = {c.name: c for c in (FP32, FP16, BF16, Int8, UInt8, TopK)}


def build(name: str, **params: Any) -> Codec:
    """The codec ``name`` with ``params``; ``ValueError`` for an unknown name or a bad parameter."""
    cls = CODECS.get(name)
    if cls is None:
        raise ValueError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    return cls(**params)


def from_config(config: Any) -> Codec:
    """The codec a ``[compression]`` entry (a pydantic model with ``name`` and its parameters) describes."""
    params = config.model_dump()
    return build(str(params.pop("name")), **params)
