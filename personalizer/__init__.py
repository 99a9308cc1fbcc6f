"""Personalizer Studio: a self-hosted Personalizer multi-slot Rank / Reward loop on Vowpal Wabbit."""

from .contract import PersonalizerError

__all__ = ["LocalPersonalizer", "PersonalizerClient", "PersonalizerError"]


def __getattr__(name: str) -> object:
    """Lazy exports: importing the contract or the client must not load Vowpal Wabbit."""
    if name == "LocalPersonalizer":
        from .engine import LocalPersonalizer

        return LocalPersonalizer
    if name == "PersonalizerClient":
        from .client import PersonalizerClient

        return PersonalizerClient
    raise AttributeError(name)
