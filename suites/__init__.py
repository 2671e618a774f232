"""Suite files shipped with robench (``robench run``); ``mnist5k.yaml`` is the demo."""
