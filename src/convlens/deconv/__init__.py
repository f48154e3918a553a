"""The deconvnet (Sec. 2.1, Fig. 1): project any activation back to pixels, the projection rules,
the explicit and autograd ways down, and the sanity check of projections.
"""
