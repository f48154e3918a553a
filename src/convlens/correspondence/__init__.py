"""Correspondence analysis (Sec. 4.2, Table 1, Fig. 8): part masks from landmarks and scores.
"""
