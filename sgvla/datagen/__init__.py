"""sgvla.datagen"""
