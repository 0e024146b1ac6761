"""minift.train"""
