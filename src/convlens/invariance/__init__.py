"""Feature invariance (Sec. 4.2, Fig. 5): numerics and figures.
"""
