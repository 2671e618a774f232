"""Attacks: the native engine and the torchattacks / ART adapters."""
