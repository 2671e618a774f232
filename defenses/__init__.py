"""Training defenses (losses and recipes) and detectors.

Each defense and detector is registered through an entry point in setup.cfg
(groups ``robench.defenses`` and ``robench.detectors``); import nothing here so
that listing them stays cheap.
"""
