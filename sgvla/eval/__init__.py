"""sgvla.eval"""
