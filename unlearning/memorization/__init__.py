"""Memorization scores (Feldman & Zhang 2020): the subset-ensemble estimator, its member store and
progress, the cheap proxies and the score-file format."""
