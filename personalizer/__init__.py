"""Personalizer Studio: a self-hosted Personalizer multi-slot Rank / Reward loop on Vowpal Wabbit."""

from .contract import PersonalizerError

__all__ = ["PersonalizerError", "LocalPersonalizer"]


def __getattr__(name: str):  # lazy: importing the contract must not load Vowpal Wabbit
    if name == "LocalPersonalizer":
        from .engine import LocalPersonalizer

        return LocalPersonalizer
    raise AttributeError(name)
