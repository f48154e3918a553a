"""Images in: the one decoding policy, raw sources (ImageFolder, Fashion-MNIST, CIFAR-10) and the
paper's preprocessing (Sec. 3).
"""
