"""Shared contracts of the CytologIA kit: classes, boxes, tables, the prepared dataset, the
challenge metric and submission rows, config, paths and the offline environment.

Every step (prepare, train, infer, submit, pipeline) imports from here, and this package
imports none of them; nothing in it runs at import time. The public Python API is ``cytokit``.
"""
