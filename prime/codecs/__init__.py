"""Codecs for updates (trainer → coordinator) and models (coordinator → trainers).

``fp32`` (the default: plain safetensors, as before), ``fp16``, ``bf16``, ``int8`` (blockwise
absmax), ``uint8`` (min-max per tensor) and ``topk`` (with error feedback). One module per
family; ``container.py`` is the blob format and the bounded, lazy decoder that every codec
shares; ``feedback.py`` keeps what a lossy codec did not send.
"""

from prime.codecs.base import Codec
from prime.codecs.container import (
    CodecMismatch,
    EncodedUpdate,
    decode,
    encode,
    is_coded,
    open_update,
    pack,
    roundtrip,
)
from prime.codecs.feedback import ErrorFeedback
from prime.codecs.fp32 import FP32
from prime.codecs.half import BF16, FP16
from prime.codecs.int8 import Int8
from prime.codecs.registry import CODECS, build, from_config
from prime.codecs.topk import TopK
from prime.codecs.uint8 import UInt8

__all__ = [
    "BF16", "CODECS", "FP16", "FP32", "Codec", "CodecMismatch", "EncodedUpdate", "ErrorFeedback", "Int8", "TopK",
    "UInt8", "build", "decode", "encode", "from_config", "is_coded", "open_update", "pack", "roundtrip",
]
