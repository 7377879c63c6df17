"""sgvla.model"""
