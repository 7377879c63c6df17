"""sgvla.train"""
