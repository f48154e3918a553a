"""Top-9 per feature map (Sec. 4, Fig. 2): the streaming accumulator, mining a dataset, projecting
the mined units, and the Fig. 2 tiles and sheets.
"""
