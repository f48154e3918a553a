"""Occlusion sensitivity (Sec. 4.2, Fig. 7): exact incremental and approximate maps, and figures.
"""
