"""minift.memory"""
