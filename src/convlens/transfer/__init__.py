"""Feature generalization (Sec. 5.2, Tables 4-7, Fig. 9): frozen features, probes, baselines, report.
"""
