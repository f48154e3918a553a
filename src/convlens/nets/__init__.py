"""The convnets of the paper (ZFNet, Fig. 3; the AlexNet replication) and any other model: model
specs, what a model expects (meta), checkpoints, the device resolver.
"""
