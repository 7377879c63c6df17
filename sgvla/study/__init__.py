"""`sgvla study`: a grid of experiments (rows x training seeds), each trained and evaluated on val.

`spec` reads a study file into rows and cells, `run` executes the pending cells on Ray
(resumable: a finished cell is never recomputed), `report` turns the finished cells into the
paper-style table, a plot and one JSON with every episode.
"""
