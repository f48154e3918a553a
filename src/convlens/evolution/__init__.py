"""Feature evolution during training (Sec. 4, Fig. 4): numerics and figures.
"""
