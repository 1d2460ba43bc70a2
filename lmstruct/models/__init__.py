"""lmstruct.models"""
