"""spinepipe's model side: MMDetection / MMSegmentation configs, training, inference, metrics.

May import ``converters``; never ``pipeline``.
"""
