"""Training (Sec. 3): the paper's recipe, its data, run directories, DDP, evaluation (Table 2) and
the architecture ablations (Sec. 5.1, Table 3).
"""
