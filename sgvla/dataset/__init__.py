"""sgvla.dataset"""
