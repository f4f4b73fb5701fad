"""Shared contracts of the CytologIA kit: classes, boxes, tables, paths, config.

Every step (prepare, train, infer, submit) imports from here; nothing in this
package runs at import time.
"""
