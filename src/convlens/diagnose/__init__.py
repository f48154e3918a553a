"""Architecture diagnostics (Sec. 4.1, Fig. 6): dead filters and aliasing, numerics and figures.
"""
