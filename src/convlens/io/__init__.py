"""Results out: ``result.json`` and PNGs (artifacts), reading runs without torch (manifest),
display helpers (viz) and the one-writer lock. Importing this package never imports torch.
"""
