"""prime: decentralized, verifiable federated training.

``prime.load_model(path)`` returns an exported model (``prime-coordinator export``) as a
ready ``nn.Module``; everything else is reached through the CLIs or ``TrainerNode``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_model(path):
    """The model exported at ``path`` (safetensors plus its JSON card), built by its task, in eval mode."""
    from prime.tasks.exported import load_model as _load

    return _load(path)


__all__ = ["__version__", "load_model"]
