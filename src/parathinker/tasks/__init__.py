"""Reasoning tasks for training and evaluating small ParaThinker models.

``pathfind``: find the route from a start to a goal in a tree given as an edge list; the
teacher searches by random walks with a budget of tries (see docs/task.md).
"""
