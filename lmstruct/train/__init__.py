"""lmstruct.train"""
