"""minift.data"""
