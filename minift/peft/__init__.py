"""minift.peft"""
