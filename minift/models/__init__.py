"""minift.models"""
