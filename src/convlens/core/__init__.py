"""What every section stands on: activation capture (the one forward-hook mechanism), layer
resolution, receptive fields, the traced graph and TF "SAME" padding.
"""
